"""A sync import stays light: asyncio, anyio, ssl and the process pool's machinery load only
when an async, rate-limit or pool name is first used (PEP 562 ``__getattr__``).

The figures (milliseconds) are measured by benchmarks/bench_import.py, never here: these tests
check what a fresh interpreter has imported, which does not depend on the machine's load.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import PYTHON, python_env, unique_name

#: Modules a sync script or a CLI call must not pay for.
HEAVY = ("asyncio", "anyio", "sniffio", "ssl", "concurrent.futures.process")


def modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [PYTHON, "-c", script], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import procthrottle",
        "from procthrottle import ProcessSemaphore",
        "from procthrottle import ProcThrottleError, SemaphoreClosedError",
        "import procthrottle\nwith procthrottle.ProcessSemaphore(2): pass",
        "import procthrottle\nwith procthrottle.ProcessSemaphore(2, crash_safe=False): pass",
    ],
)
def test_a_sync_import_pulls_in_no_asyncio(code: str) -> None:
    loaded = modules_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("AsyncSemaphore", "asyncio"),
        ("throttle", "asyncio"),
        ("AsyncRateLimiter", "anyio"),
        ("ThrottledProcessPool", "concurrent.futures.process"),
        ("WorkerCrashedError", "concurrent.futures.process"),
    ],
)
def test_an_async_or_pool_name_loads_on_first_use(name: str, module: str) -> None:
    loaded = modules_after(f"import procthrottle\nprocthrottle.{name}")
    assert module in loaded


def test_every_public_name_resolves_and_is_listed() -> None:
    code = (
        "import concurrent.futures.process as p, procthrottle\n"
        "assert all(getattr(procthrottle, n) is not None for n in procthrottle.__all__)\n"
        "assert set(procthrottle.__all__) <= set(dir(procthrottle))\n"
        "assert issubclass(procthrottle.WorkerCrashedError, p.BrokenProcessPool)\n"
        "from procthrottle import *\n"
        "from procthrottle._exceptions import WorkerCrashedError\n"
        "assert WorkerCrashedError is procthrottle.WorkerCrashedError\n"
        "try:\n"
        "    procthrottle.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    assert \"has no attribute 'NoSuchName'\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')"
    )
    modules_after(code)


def test_the_cli_run_path_imports_only_what_it_uses() -> None:
    """``procthrottle run`` pays for neither asyncio, the inventory (``status``/``list``) nor
    the installed metadata (``--version``)."""
    name = unique_name()
    script = (
        "import sys\n"
        "from procthrottle._cli import main\n"
        f"assert main(['run', '--name', {name!r}, '--limit', '2', '--', 'true']) == 0\n"
        "loaded = set(sys.modules)\n"
        f"main(['unlink', {name!r}])\n"
        "import json\n"
        "print(json.dumps(sorted(loaded)))"
    )
    out = subprocess.run(
        [PYTHON, "-c", script], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    unwanted = {*HEAVY, "importlib.metadata", "procthrottle._kernel._inventory"}
    assert not loaded & unwanted, sorted(loaded & unwanted)
