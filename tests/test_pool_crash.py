"""A worker that dies fails only its own task; every other task runs exactly once; nothing hangs.

Task starts are counted through a file opened with O_APPEND (pool_tasks.count_start), so
"exactly once" is an observed fact, not a hope.
"""

from __future__ import annotations

import collections
import logging
import pickle
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import pytest

import pool_tasks as tasks
from procthrottle import ProcThrottleError, ThrottledProcessPool, WorkerCrashedError

pytestmark = pytest.mark.timeout(120)


def test_worker_crashed_error_is_a_broken_process_pool() -> None:
    assert issubclass(WorkerCrashedError, BrokenProcessPool)
    assert issubclass(WorkerCrashedError, ProcThrottleError)


def test_one_sigkill_among_thousands_fails_one_task_and_reruns_none(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(2, 2) as pool:
        futures = [pool.submit(tasks.count_start, starts, i) for i in range(1500)]
        doomed = pool.submit(tasks.count_then_sigkill, starts, -5)
        futures += [pool.submit(tasks.count_start, starts, i) for i in range(1500, 3000)]
        assert [f.result(timeout=60) for f in futures] == list(range(3000))
        with pytest.raises(WorkerCrashedError, match=r"pid \d+.*SIGKILL") as info:
            doomed.result(timeout=60)
        assert isinstance(info.value, BrokenProcessPool)
        stats = pool.stats()
        assert pool.semaphore.value == 2
    counts = collections.Counter(tasks.starts(starts))
    assert counts == collections.Counter({**dict.fromkeys(range(3000), 1), -5: 1})
    assert stats["crashed"] == stats["failed"] == 1
    assert stats["completed"] == 3000


def test_self_killing_tasks_fail_alone_among_innocent_ones(tmp_path: Path) -> None:
    """Three tasks kill their workers among innocent 20 ms tasks and one long innocent task:
    each crash is counted against its own task only; no innocent task fails or restarts."""
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(2, 2) as pool:
        futures: dict[int, Future[Any]] = {}
        for i in range(90):
            if i in (10, 40, 70):
                futures[i] = pool.submit(tasks.count_then_sigkill, starts, i)
            else:
                futures[i] = pool.submit(tasks.count_start, starts, i, 0.5 if i == 41 else 0.02)
        for i, future in futures.items():
            if i in (10, 40, 70):
                with pytest.raises(WorkerCrashedError, match="SIGKILL"):
                    future.result(timeout=60)
            else:
                assert future.result(timeout=60) == i
        assert pool.stats()["crashed"] == 3
        assert pool.semaphore.value == 2
    assert collections.Counter(tasks.starts(starts)) == collections.Counter(range(90))


def test_a_crash_while_pickling_the_result_is_that_tasks_crash(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(2, 2) as pool:
        doomed = pool.submit(tasks.count_then_bad_result, starts, 1)
        others = [pool.submit(tasks.count_start, starts, i, 0.01) for i in range(2, 30)]
        with pytest.raises(WorkerCrashedError, match="exited with code 7"):
            doomed.result(timeout=60)
        assert [f.result(timeout=60) for f in others] == list(range(2, 30))
    assert collections.Counter(tasks.starts(starts)) == collections.Counter(range(1, 30))


def test_dead_worker_is_logged_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="procthrottle")
    with ThrottledProcessPool(1, 1) as pool:
        first = pool.submit(tasks.pid_after, 0).result(timeout=30)
        with pytest.raises(WorkerCrashedError, match=f"pid {first}"):
            pool.submit(tasks.sigkill_self).result(timeout=30)
        second = pool.submit(tasks.pid_after, 0).result(timeout=30)
        assert second != first
        assert pool.stats()["workers"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "procthrottle"]
    assert any(f"{first} was killed by SIGKILL" in m for m in messages), messages
    assert any(f"{second} to replace {first}" in m for m in messages), messages
    handlers = logging.getLogger("procthrottle").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


# These run in a fresh interpreter: a library imported by other tests (tblib, via distributed)
# patches how every exception pickles, which would change what the parent can rebuild.
UNREBUILDABLE = """
from concurrent.futures.process import _RemoteTraceback
from procthrottle import ProcThrottleError, ThrottledProcessPool
import pool_tasks as tasks
if __name__ == "__main__":
    with ThrottledProcessPool(2, 1) as pool:
        bad = [pool.submit(getattr(tasks, NAME)) for _ in range(5)]
        good = [pool.submit(tasks.square, i) for i in range(20)]
        for future in bad:
            exc = future.exception(timeout=30)
            assert isinstance(exc, ProcThrottleError), repr(exc)
            assert "cannot be rebuilt" in str(exc), exc
            assert isinstance(exc.__cause__, _RemoteTraceback)
            assert "pool_tasks.py" in str(exc.__cause__)
        print(str(exc))
        assert [f.result(timeout=30) for f in good] == [i * i for i in range(20)]
        assert pool.stats()["failed"] == 5
        assert pool.semaphore.value == 1
"""


@pytest.mark.parametrize(
    ("name", "shown"),
    [("raise_two_arg_error", "TwoArgError: 404: not here"), ("raise_http_error", "HTTPError")],
)
def test_an_exception_the_parent_cannot_rebuild_still_resolves(name: str, shown: str) -> None:
    """The worker's exception pickles but cannot be unpickled here (a multi-argument __init__,
    urllib's HTTPError): the future fails with a clear error naming it; nothing hangs, even
    with limit < workers; shutdown returns."""
    out = tasks.run_script(f"NAME = {name!r}\n" + UNREBUILDABLE)
    assert out.returncode == 0, out.stderr
    assert shown in out.stdout


def test_an_exception_that_cannot_be_pickled_fails_with_the_pickling_error() -> None:
    out = tasks.run_script(
        """
        from procthrottle import ThrottledProcessPool
        import pool_tasks as tasks
        if __name__ == "__main__":
            with ThrottledProcessPool(1, 1) as pool:
                exc = pool.submit(tasks.raise_unpicklable_error).exception(timeout=30)
                assert isinstance(exc, TypeError) and "pickle" in str(exc), repr(exc)
                notes = getattr(exc, "__notes__", ["UnpicklableError"])  # none before 3.11
                assert "UnpicklableError" in "".join(notes)
                assert "holds a lock" in str(exc.__cause__)
                assert pool.submit(tasks.square, 3).result(timeout=30) == 9
            print("ok")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_an_exception_whose_pickling_raises_system_exit_spares_the_worker() -> None:
    with ThrottledProcessPool(1, 1) as pool:
        exc = pool.submit(tasks.raise_error_that_exits_when_pickled).exception(timeout=30)
        assert isinstance(exc, pickle.PicklingError), repr(exc)  # not a SystemExit to raise
        assert "raised SystemExit: no pickling this" in str(exc)
        assert "ExitsWhenPickled" in str(exc.__cause__)
        assert pool.submit(tasks.square, 3).result(timeout=30) == 9
        stats = pool.stats()
        assert stats["crashed"] == 0
        assert stats["workers_started"] == 1


def test_task_errors_chain_the_remote_traceback_like_ppe() -> None:
    with ThrottledProcessPool(1, 1) as pool, pytest.raises(KeyError, match="boom") as info:
        pool.submit(tasks.fail, "boom").result(timeout=30)
    assert isinstance(info.value.__cause__, _RemoteTraceback)
    assert 'raise KeyError(message)' in str(info.value.__cause__)


def test_unrebuildable_exceptions_do_not_hang_shutdown_in_a_child() -> None:
    """The issue's hang, end to end in a fresh interpreter with a deadline."""
    out = tasks.run_script(
        """
        from procthrottle import ThrottledProcessPool
        import pool_tasks as tasks
        if __name__ == "__main__":
            pool = ThrottledProcessPool(2, 1)
            futures = [pool.submit(tasks.raise_http_error) for _ in range(10)]
            futures += [pool.submit(tasks.square, 2) for _ in range(10)]
            pool.shutdown(wait=True)
            print(sum(f.exception() is not None for f in futures), "failed")
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10 failed"


def test_workers_exit_when_the_parent_is_killed() -> None:
    """SIGKILL the program that owns the pool: its workers see their task pipe close and exit
    (under fork too, where each worker must not keep its siblings' pipes open, and under
    forkserver, Linux's default from Python 3.14)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for method in ("fork", "spawn", "forkserver"):
        code = f"""
import multiprocessing, time
from procthrottle import ThrottledProcessPool
import pool_tasks as tasks
if __name__ == "__main__":
    pool = ThrottledProcessPool(3, 3, mp_context=multiprocessing.get_context({method!r}))
    pids = {{pool.submit(tasks.pid_after, 0.2).result() for _ in range(12)}}
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(60)
"""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([tasks._SRC, tasks._TESTS])
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()]
            assert pids
        finally:
            proc.kill()
            proc.communicate()
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if _alive(pid)]
        assert not alive, f"{method}: orphaned workers {alive}"
        _ = signal


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_pickling_problem_travels_where_tblib_pickles_exception_chains() -> None:
    """Dask installs tblib's pickling support, which pickles an exception's chain and
    traceback: the PicklingError made for an exception that cannot be pickled must not carry
    that exception along in its chain (it came back as an unrebuildable error instead)."""
    out = tasks.run_script(
        """
        import pickle
        from tblib import pickling_support
        pickling_support.install()
        from procthrottle import ThrottledProcessPool
        import pool_tasks as tasks
        if __name__ == "__main__":
            with ThrottledProcessPool(1, 1) as pool:
                exc = pool.submit(tasks.raise_error_that_exits_when_pickled).exception(timeout=30)
                assert isinstance(exc, pickle.PicklingError), repr(exc)
                assert "raised SystemExit: no pickling this" in str(exc)
            print("ok")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
