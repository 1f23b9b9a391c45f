"""ProcessPoolExecutor's semantics: RUNNING only once started, cancellation, shutdown,
interpreter exit, map() left early, Ctrl-C."""

from __future__ import annotations

import collections
import gc
import multiprocessing
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

import pool_tasks as tasks
from procthrottle import ThrottledProcessPool

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_running_only_once_started_and_cancel_works_for_all_not_started(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(2, 2) as pool:
        futures = [pool.submit(tasks.count_start, starts, i, 0.3) for i in range(200)]
        wait_until(lambda: sum(f.running() for f in futures) == 2)
        assert sum(f.running() for f in futures) <= 2  # PPE: 5 (its call queue)
        cancelled = sum(f.cancel() for f in reversed(futures))
        assert cancelled >= 194
        assert pool.stats()["cancelled"] == cancelled
    started = tasks.starts(starts)
    assert len(started) == 200 - cancelled  # every task whose cancel() failed ran, once
    assert sorted(started) == sorted(i for i, f in enumerate(futures) if not f.cancelled())


def test_a_queued_task_on_a_busy_worker_is_pending_and_cancellable(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(1, 1) as pool:
        warm = [pool.submit(tasks.square, i) for i in range(200)]  # tasks prove short: depth
        [f.result(timeout=30) for f in warm]
        long = pool.submit(tasks.count_start, starts, 1, 0.5)
        queued = [pool.submit(tasks.count_start, starts, i) for i in range(2, 12)]
        wait_until(long.running)
        assert not any(f.running() for f in queued)
        assert all(f.cancel() for f in queued)
        assert long.result(timeout=30) == 1
        assert not long.cancel()
    assert tasks.starts(starts) == [1]


def test_shutdown_cancel_futures_cancels_everything_not_started(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    pool = ThrottledProcessPool(2, 2)
    futures = [pool.submit(tasks.count_start, starts, i, 0.2) for i in range(100)]
    wait_until(lambda: sum(f.running() for f in futures) == 2)
    pool.shutdown(wait=True, cancel_futures=True)
    ran = [f for f in futures if not f.cancelled()]
    assert all(f.done() for f in futures)
    assert 2 <= len(ran) <= 6
    assert sorted(tasks.starts(starts)) == sorted(f.result() for f in ran)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.square, 1)


def test_max_workers_must_be_positive() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
            ThrottledProcessPool(bad)


def test_max_tasks_per_child_counts_tasks() -> None:
    ctx = multiprocessing.get_context("fork")
    with ThrottledProcessPool(2, 2, max_tasks_per_child=1, mp_context=ctx) as pool:
        pids = [f.result(timeout=60) for f in [pool.submit(tasks.pid_after, 0) for _ in range(30)]]
    assert len(set(pids)) == 30  # one task per process
    with ThrottledProcessPool(2, 2, max_tasks_per_child=3, mp_context=ctx) as pool:
        pids = [f.result(timeout=60) for f in [pool.submit(tasks.pid_after, 0) for _ in range(30)]]
    assert max(collections.Counter(pids).values()) <= 3


@pytest.mark.parametrize("how", ["task_error", "timeout", "close"])
def test_leaving_map_early_cancels_what_has_not_started(tmp_path: Path, how: str) -> None:
    starts = str(tmp_path / "starts")
    with ThrottledProcessPool(2, 2) as pool:
        if how == "task_error":
            results = pool.map(tasks.fail_at, range(200), [5] * 200)
            with pytest.raises(ValueError, match="item 5"):
                list(results)
        elif how == "timeout":
            results = pool.map(tasks.count_start, [starts] * 200, range(200), [0.1] * 200,
                               timeout=0.3)
            with pytest.raises(TimeoutError):
                list(results)
        else:
            results = pool.map(tasks.count_start, [starts] * 200, range(200), [0.05] * 200)
            assert next(results) == 0
            results.close()  # type: ignore[attr-defined]
        stats = pool.stats()
    assert stats["cancelled"] >= 180
    assert stats["completed"] + stats["failed"] <= 20
    if how != "task_error":
        assert len(tasks.starts(starts)) <= 20  # PPE: ~9 of 200


def test_map_iterator_does_not_keep_results_alive() -> None:
    with ThrottledProcessPool(2, 2) as pool:
        results = pool.map(tasks.box, range(4))
        first = next(results)
        ref = weakref.ref(first)
        del first
        gc.collect()
        assert ref() is None
        assert [b.value for b in results] == [1, 2, 3]
        chunked = pool.map(tasks.box, range(10), chunksize=5)
        first = next(chunked)
        ref = weakref.ref(first)
        del first
        assert ref() is None
        assert len(list(chunked)) == 9


def test_pending_tasks_still_run_at_interpreter_exit(tmp_path: Path) -> None:
    for ending in ("pool.shutdown(wait=False)", "pass", "del pool"):
        starts = tmp_path / f"starts-{len(ending)}"
        out = tasks.run_script(
            f"""
            from procthrottle import ThrottledProcessPool
            import pool_tasks as tasks
            if __name__ == "__main__":
                pool = ThrottledProcessPool(2, 2)
                for i in range(300):
                    pool.submit(tasks.count_start, {str(starts)!r}, i, 0.001)
                {ending}
            """,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert collections.Counter(tasks.starts(str(starts))) == collections.Counter(range(300))


def test_submit_after_interpreter_shutdown_raises_runtime_error() -> None:
    out = tasks.run_script(
        """
        import atexit
        from procthrottle import ThrottledProcessPool
        import pool_tasks as tasks
        if __name__ == "__main__":
            pool = ThrottledProcessPool(1, 1)
            def late():
                try:
                    pool.submit(tasks.square, 2)
                except RuntimeError as exc:
                    print("refused:", exc)
            atexit.register(late)
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "refused: cannot schedule new futures after interpreter shutdown" in out.stdout


CTRL_C_SUBMIT = """
import sys
from procthrottle import ThrottledProcessPool
import pool_tasks as tasks
if __name__ == "__main__":
    with ThrottledProcessPool(2, 1) as pool:
        print("ready", flush=True)
        while True:
            pool.submit(tasks.square, 3)
"""

CTRL_C_MAP = """
import sys
from procthrottle import ThrottledProcessPool
import pool_tasks as tasks
if __name__ == "__main__":
    with ThrottledProcessPool(2, 2) as pool:
        results = pool.map(tasks.count_start, [sys.argv[1]] * 200, range(200), [0.3] * 200)
        print("ready", flush=True)
        for _ in results:
            pass
"""


def _interrupt(code: str, *args: str, delay: float) -> tuple[float, str]:
    """Start ``code``, Ctrl-C it (SIGINT to its process group, as a terminal does) once it is
    ready; return how long it took to exit after that, and its stderr."""
    env = tasks.run_script.__globals__["os"].environ.copy()
    env["PYTHONPATH"] = ":".join([tasks._SRC, tasks._TESTS])
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        import os

        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        return time.monotonic() - sent, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CTRL_C_WITH = """
import sys
from procthrottle import ThrottledProcessPool
import pool_tasks as tasks
if __name__ == "__main__":
    with ThrottledProcessPool(2, 2) as pool:
        for i in range(100):
            pool.submit(tasks.count_start, sys.argv[1], i, 0.3)
        print("ready", flush=True)
        import time
        time.sleep(60)
"""


def test_ctrl_c_in_a_submit_loop_never_hangs_shutdown() -> None:
    for trial in range(4):
        took, err = _interrupt(CTRL_C_SUBMIT, delay=0.2 + 0.05 * trial)
        assert "KeyboardInterrupt" in err
        assert took < 20, err


def test_ctrl_c_leaving_with_cancels_what_has_not_started(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    took, err = _interrupt(CTRL_C_WITH, starts, delay=0.4)
    assert "KeyboardInterrupt" in err
    assert took < 5, err
    assert len(tasks.starts(starts)) <= 8  # the running ones finish; 100 were queued


def test_ctrl_c_during_map_exits_fast_and_cancels_the_rest(tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    took, err = _interrupt(CTRL_C_MAP, starts, delay=0.5)
    assert "KeyboardInterrupt" in err
    assert err.count("Traceback") == 1, err  # the parent's only, none from the workers
    assert took < 5  # PPE: 0.7 s; the running tasks finish (0.3 s each)
    assert len(tasks.starts(starts)) <= 12


def test_cancel_racing_a_claim_is_decided_once(tmp_path: Path) -> None:
    """Every claim stalls 50 ms inside the worker's claim lock while we cancel everything:
    cancel() returns True exactly for the tasks that never start, and the others run once."""
    starts, marker = str(tmp_path / "starts"), str(tmp_path / "claims")
    ctx = multiprocessing.get_context("fork")
    with ThrottledProcessPool(
        2, 2, mp_context=ctx, initializer=tasks.slow_claims, initargs=(marker, 0.05)
    ) as pool:
        futures = [pool.submit(tasks.count_start, starts, i) for i in range(40)]
        wait_until(lambda: len(tasks.starts(marker)) >= 3)  # claims are under way
        outcome = [f.cancel() for f in reversed(futures)][::-1]
    started = collections.Counter(tasks.starts(starts))
    assert all(n == 1 for n in started.values())
    assert set(started) == {i for i, ok in enumerate(outcome) if not ok}
    assert sum(outcome) < 40  # how many win depends on who gets the stalled lock first


def test_a_worker_killed_inside_its_claim_lock_does_not_hang_cancel(tmp_path: Path) -> None:
    """SIGKILL while the worker holds its claim lock (the lock is never released): cancel()
    of a task it holds still returns promptly, and the task it was about to claim runs once,
    on its replacement."""
    starts, marker = str(tmp_path / "starts"), str(tmp_path / "claims")
    ctx = multiprocessing.get_context("fork")
    with ThrottledProcessPool(
        1, 1, mp_context=ctx, initializer=tasks.slow_claims, initargs=(marker, 2.0)
    ) as pool:
        first = pool.submit(tasks.count_start, starts, 1)
        second = pool.submit(tasks.count_start, starts, 2)
        wait_until(lambda: len(tasks.starts(marker)) >= 1)
        import os

        os.kill(tasks.starts(marker)[0], signal.SIGKILL)
        begun = time.monotonic()
        assert second.cancel()
        assert time.monotonic() - begun < 2
        assert first.result(timeout=60) == 1
    assert tasks.starts(starts) == [1]


def test_results_stream_and_a_long_task_never_holds_short_ones() -> None:
    """No-op results arrive while a 2 s task runs; two adjacent 1 s tasks among no-ops run on
    different workers (an idle worker takes the second), so the batch takes ~1 s, not 2 s."""
    with ThrottledProcessPool(2, 2) as pool:
        [f.result(timeout=30) for f in [pool.submit(tasks.square, i) for i in range(300)]]
        begun = time.monotonic()
        first = [pool.submit(tasks.square, i) for i in range(300)]
        slow = pool.submit(tasks.pid_after, 2.0)
        last = [pool.submit(tasks.square, i) for i in range(300)]
        for f in first + last:
            f.result(timeout=30)
        assert time.monotonic() - begun < 1.5  # all no-ops are back long before the 2 s task
        assert not slow.done()
        slow.result(timeout=30)

        begun = time.monotonic()
        futures = [pool.submit(tasks.square, i) for i in range(300)]
        pair = [pool.submit(tasks.pid_after, 1.0), pool.submit(tasks.pid_after, 1.0)]
        futures += [pool.submit(tasks.square, i) for i in range(300)]
        for f in futures:
            f.result(timeout=30)
        pids = {f.result(timeout=30) for f in pair}
        assert time.monotonic() - begun < 1.8  # one after the other would take 2 s
        assert len(pids) == 2
