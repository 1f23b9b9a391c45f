"""Every example and every documentation snippet runs on a base install: a virtual environment
holding procthrottle and its required dependencies only, no extras (no tqdm, redis, trio...).

The environment is made once for the module, without network or pip: a bare venv whose
site-packages links the files of exactly those distributions from the test environment (the
package itself as it is installed there).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from test_docs import BLOCKS, SPAWN, isolate_names, remove_names
from test_examples import EXAMPLES, RUNS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")


def base_distributions(name: str = "procthrottle") -> set[str]:
    """`name` and what it requires, transitively, leaving out every extra."""
    found: set[str] = set()
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found.add(key)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


@pytest.fixture(scope="module")
def base_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("base-venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip())
    for name in base_distributions():
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            target = (site / file).resolve()
            if not source.is_file() or not target.is_relative_to(root.resolve()):
                continue  # a script outside site-packages, or __pycache__ gone
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)
    return str(python)


def base_env(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return env


@pytest.mark.timeout(60)
def test_the_base_install_has_no_extra(base_python: str) -> None:
    out = subprocess.run(
        [base_python, "-c", "import procthrottle, importlib.util as u; "
         "print(procthrottle.__file__, [m for m in ('tqdm', 'redis', 'trio', 'dask') "
         "if u.find_spec(m)])"],
        env=base_env(), capture_output=True, text=True, timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("[]"), out.stdout  # procthrottle, and no extra


@pytest.mark.timeout(90)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs_on_a_base_install(base_python: str, script: str) -> None:
    args, expected = RUNS[script]
    args = [a for a in args if a != "--no-progress"]  # the progress bar needs no extra
    out = subprocess.run([base_python, str(EXAMPLES / script), *args], env=base_env(),
                         capture_output=True, text=True, timeout=80)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(expected, out.stdout), out.stdout


RUNNABLE = sorted(w for w, code in BLOCKS.items() if not code.lstrip().startswith("# not run"))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", RUNNABLE)
def test_snippet_runs_on_a_base_install(base_python: str, where: str, tmp_path: Path) -> None:
    first = BLOCKS[where].lstrip().splitlines()[0]
    if first.startswith("# needs "):
        pytest.skip(first[2:])  # a snippet that needs more than a base install says so first
    code, names = isolate_names(BLOCKS[where])
    (tmp_path / "sitecustomize.py").write_text(SPAWN)
    (tmp_path / "snippet.py").write_text(code + "\n")
    try:
        out = subprocess.run([base_python, "snippet.py"], cwd=tmp_path, env=base_env(tmp_path),
                             capture_output=True, text=True, timeout=80)
    finally:
        remove_names(names)
    assert out.returncode == 0, f"{where} failed on a base install:\n{out.stderr[-3000:]}"
