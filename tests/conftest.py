from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _leaks import Snapshot, leaked_since
from redis_server import redis_server


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_kernel_objects() -> Iterator[None]:
    """The whole suite must leave none of its own kernel objects behind (see tests/_leaks.py).

    Objects other programs create or keep meanwhile are not counted: the host may be shared.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    before = Snapshot.take()
    yield
    gc.collect()  # anonymous sets go with their last handle, which a cycle may still keep
    leaked = leaked_since(before)
    assert not leaked, f"tests leaked {len(leaked)} kernel objects: {leaked}"


@pytest.fixture(scope="session", autouse=True)
def _unlink_throttled_funcs_semaphore(_no_leaked_kernel_objects: None) -> Iterator[None]:
    """The named semaphores of tests/throttled_funcs.py, made when a test module imports it:
    unlinked after the session (before the leak check), whichever modules ran."""
    yield
    module = sys.modules.get("throttled_funcs")
    if module is not None:
        module.unlink_names()


@pytest.fixture(scope="session")
def other_procthrottle_user() -> Iterator[subprocess.Popen[str]]:
    """Another program of this user making and removing anonymous semaphores and rate limiters
    in a loop (tests/churn.py) while the test runs: leak checks must count only their own."""
    from helpers import python_env

    churn = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("churn.py"))], env=python_env(),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert churn.stdout is not None
    assert churn.stdout.readline() == "ready\n", churn.stderr.read() if churn.stderr else ""
    yield churn
    churn.terminate()  # it stops at the end of its round and removes what it made
    out, err = churn.communicate(timeout=30)
    assert churn.returncode == 0, err
    assert int(out) > 0


@pytest.fixture
def dask_client(tmp_path: Path) -> Iterator[Any]:
    """A Client of a real two-process Dask LocalCluster, its scratch space in tmp_path."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with (
        dask.config.set({"temporary-directory": str(tmp_path / "dask")}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client
    with warnings.catch_warnings():
        # distributed leaves a few sockets for the garbage collector: not ours to fail on
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """The URL of a real, memory-only redis-server started for the module (skip without one)."""
    try:
        with redis_server() as found:
            yield found
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def other_user() -> Iterator[int]:
    """The uid of a second local user, made for the module and removed after it (root only)."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/useradd"):
        pytest.skip("needs root and useradd to make a second user")
    user = f"ptatk{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", user], check=True)
    uid = -1
    try:
        import pwd

        uid = pwd.getpwnam(user).pw_uid
        yield uid
    finally:
        subprocess.run(["userdel", user], check=False)
        shutil.rmtree(f"/dev/shm/procthrottle-{uid}", ignore_errors=True)  # its name registry
