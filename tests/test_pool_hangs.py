"""The last ways the pool could hang, spin or take innocent tasks down (issue 17).

Each hang-prone case runs in a child interpreter with a timeout, so a hang fails the test
instead of blocking the suite.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import pool_tasks as tasks
from procthrottle import ThrottledProcessPool
from procthrottle._pool import _wire

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the pool needs POSIX")


def _ok(out: object) -> str:
    assert out.returncode == 0, (out.stdout, out.stderr)  # type: ignore[attr-defined]
    return str(out.stdout)  # type: ignore[attr-defined]


# -- 1. revoked tasks never use up a worker ----------------------------------------------------
REVOKES = """
import multiprocessing, time
import pool_tasks as tasks
from procthrottle import ThrottledProcessPool
from procthrottle._pool._worker import RING_SIZE

if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    with ThrottledProcessPool(1, 1, mp_context=fork) as pool:
        pool.submit(tasks.noop).result(timeout=10)
        busy = pool.submit(tasks.nap, 8.0)
        while pool.stats()["cancelled"] < RING_SIZE + 200:  # more than the worker's ring holds
            batch = [pool.submit(tasks.noop) for _ in range(50)]
            deadline = time.monotonic() + 0.05  # a full ring keeps them queued: that is fine
            while pool.stats()["queued"] and time.monotonic() < deadline:
                time.sleep(0.001)
            for f in batch:
                f.cancel()
            if busy.done():
                raise SystemExit("the long task ended too early for this test")
        revoked = pool.stats()["cancelled"]
        busy.result(timeout=30)
        assert pool.submit(tasks.square, 7).result(timeout=10) == 49, pool.stats()
        print("ok", revoked)
"""


def test_revoked_tasks_never_use_up_a_workers_sequence_ring() -> None:
    """A busy worker that had more tasks revoked than its ring of sequence numbers holds still
    gets (and runs) tasks once it is free: the pool does not hang."""
    assert _ok(tasks.run_script(REVOKES, timeout=40)).startswith("ok")


def test_a_worker_free_again_after_its_tasks_moved_away_gets_work(tmp_path: Path) -> None:
    """Tasks moved off a busy worker (to an idle one) do not leave it starved afterwards."""
    out = tasks.run_script(
        """
        import time
        import pool_tasks as tasks
        from procthrottle import ThrottledProcessPool
        from procthrottle._pool._worker import RING_SIZE

        if __name__ == "__main__":
            with ThrottledProcessPool(2, 2) as pool:
                long = pool.submit(tasks.pid_after, 5.0)
                while not long.running():
                    time.sleep(0.001)
                while not long.done():  # its ring fills up with seqs moved away
                    [f.result(timeout=10) for f in [pool.submit(tasks.noop) for _ in range(40)]]
                busy = long.result(timeout=10)
                if pool.stats()["requeued"] < RING_SIZE - 10:
                    print("too few tasks moved for this test:", pool.stats())
                    raise SystemExit(0)
                pids = set()
                deadline = time.monotonic() + 20
                while busy not in pids and time.monotonic() < deadline:
                    a, b = pool.submit(tasks.pid_after, 0.2), pool.submit(tasks.pid_after, 0.2)
                    pids |= {a.result(timeout=10), b.result(timeout=10)}
                print("ok" if busy in pids else "starved", pool.stats())
        """,
        timeout=60,
    )
    text = _ok(out)
    if "too few tasks moved" in text:
        pytest.skip("the machine was too slow to move enough tasks")
    assert text.startswith("ok"), text


# -- 2. a cancelled future is done for wait() and as_completed() -------------------------------
def test_a_cancelled_future_is_done_for_wait_and_as_completed(tmp_path: Path) -> None:
    with ThrottledProcessPool(1, 1) as pool:
        busy = pool.submit(tasks.nap, 1.0)
        queued = pool.submit(tasks.noop)  # sent to the busy worker, or still queued
        later = [pool.submit(tasks.noop) for _ in range(300)]  # some never leave the queue
        assert queued.cancel()
        assert all(f.cancel() for f in later)
        begin = time.monotonic()
        _, not_done = concurrent.futures.wait([queued, *later], timeout=5)
        assert not not_done
        assert time.monotonic() - begin < 1.0
        assert list(concurrent.futures.as_completed([queued], timeout=5)) == [queued]
        busy.result(timeout=30)


def test_futures_cancelled_by_shutdown_are_done_for_wait_and_as_completed() -> None:
    pool = ThrottledProcessPool(1, 1)
    busy = pool.submit(tasks.nap, 0.5)
    later = [pool.submit(tasks.noop) for _ in range(50)]
    deadline = time.monotonic() + 30
    while not busy.running() and time.monotonic() < deadline:
        time.sleep(0.001)
    waited: list[tuple[set[object], set[object]]] = []
    import threading

    watcher = threading.Thread(
        target=lambda: waited.append(concurrent.futures.wait(later, timeout=10))  # type: ignore[arg-type]
    )
    watcher.start()
    time.sleep(0.1)  # the watcher waits on every future now
    pool.shutdown(wait=True, cancel_futures=True)
    watcher.join(15)
    assert waited, "wait() did not return"
    assert not waited[0][1], "wait() did not see the cancelled futures"
    assert all(f.cancelled() for f in later)
    assert len(list(concurrent.futures.as_completed(later, timeout=5))) == len(later)
    busy.result(timeout=1)


# -- 3. a semaphore that stops working ---------------------------------------------------------
UNLINKED = """
import os, time
import pool_tasks as tasks
from procthrottle import ProcessSemaphore, ThrottledProcessPool

if __name__ == "__main__":
    name = "pt-i17-unlinked-%d" % os.getpid()
    sem = ProcessSemaphore(2, name=name)
    try:
        pool = ThrottledProcessPool(2, semaphore=sem)
        assert pool.submit(tasks.square, 3).result(timeout=30) == 9
        ProcessSemaphore.open(name).unlink()  # what `procthrottle unlink NAME` does
        futures = [pool.submit(tasks.square, i) for i in range(20)]
        outcomes = set()
        for f in futures:
            try:
                f.result(timeout=30)
                outcomes.add("result")
            except Exception as exc:
                outcomes.add(type(exc).__name__)
        stats = pool.stats()
        pool.shutdown()
        print(sorted(outcomes), stats["workers_started"])
    finally:
        try:
            ProcessSemaphore.open(name).unlink()
        except FileNotFoundError:
            pass
"""


def test_an_unlinked_semaphore_fails_the_tasks_and_workers_are_not_restarted() -> None:
    out = tasks.run_script(UNLINKED, timeout=60)
    text = _ok(out)
    outcomes, started = text.rsplit(" ", 1)
    assert "result" not in outcomes or "Error" in outcomes, text
    assert "SemaphoreClosedError" in outcomes or "BrokenProcessPool" in outcomes, text
    assert int(started) <= 4, text  # no restart loop
    assert out.stderr.count("Traceback") <= 1, out.stderr


CHILD_EXIT = """
import multiprocessing, sys
import pool_tasks as tasks
from procthrottle import ThrottledProcessPool

def child():
    pool = ThrottledProcessPool(2, 2, mp_context=multiprocessing.get_context("fork"))
    pool.submit(tasks.square, 3).result(timeout=30)
    pool.submit(tasks.nap, 0.3)  # still pending when the child leaves: runs or fails, no hang
    # no shutdown(): multiprocessing's finalizers run at the child's exit

if __name__ == "__main__":
    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    print("exitcode", proc.exitcode)
    if proc.exitcode is None:
        proc.kill()
"""


def test_a_pool_left_running_in_a_multiprocessing_child_lets_it_exit() -> None:
    out = tasks.run_script(CHILD_EXIT, timeout=60)
    assert _ok(out).split() == ["exitcode", "0"], (out.stdout, out.stderr[-3000:])
    assert out.stderr.count("Traceback") <= 1, out.stderr[-3000:]


# -- 4. done-callbacks raising BaseException -----------------------------------------------------
def test_a_done_callback_raising_systemexit_never_strands_futures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def callback(future: concurrent.futures.Future[int]) -> None:
        seen.append(future.result())
        # Only on the pool's thread: a future already done when the callback is added runs it
        # at once on the caller's thread, where a SystemExit is the caller's own (stdlib).
        if future.result() % 3 == 0 and threading.current_thread() is not threading.main_thread():
            raise SystemExit(f"callback {future.result()}")

    def second(future: concurrent.futures.Future[int]) -> None:
        seen.append(-1)

    with ThrottledProcessPool(2, 2) as pool:
        blockers = [pool.submit(tasks.nap, 0.5) for _ in range(2)]  # the squares wait behind
        futures = [pool.submit(tasks.square, i) for i in range(200)]
        for f in futures:
            f.add_done_callback(callback)
            f.add_done_callback(second)
        _, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done
        assert all(blocker.result(timeout=30) >= 0 for blocker in blockers)
        assert [f.result() for f in futures] == [i * i for i in range(200)]
        assert pool.submit(tasks.square, 5).result(timeout=30) == 25  # the manager lives on
    assert seen.count(-1) == 200  # the later callbacks of each future still ran
    assert "SystemExit" in caplog.text


MANAGER_FAILS = """
import time
import pool_tasks as tasks
from procthrottle import ThrottledProcessPool
from procthrottle._pool import _engine

if __name__ == "__main__":
    failed = []
    pool = ThrottledProcessPool(2, 2)
    engine = pool._engine
    original = type(engine.traffic).on_results

    def on_results(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not failed and self.engine.outcomes.pending_count() >= 1:
            failed.append(1)
            raise RuntimeError("a bug in the manager")
        return out

    type(engine.traffic).on_results = on_results
    futures = [pool.submit(tasks.square, i) for i in range(50)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(timeout=20))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    errors = sorted({o for o in outcomes if isinstance(o, str)})
    print(bool(failed), sum(isinstance(o, int) for o in outcomes), errors)
"""


def test_a_failing_manager_resolves_every_future_it_holds() -> None:
    out = tasks.run_script(MANAGER_FAILS, timeout=60)
    text = _ok(out)
    failed, delivered, errors = text.split(" ", 2)
    assert failed == "True", text
    assert int(delivered) >= 1, text  # results read before the failure are delivered
    assert errors.strip() in ("[]", "['BrokenProcessPool']"), text


# -- 5. frames of any size -----------------------------------------------------------------------
def test_frame_headers_carry_sizes_over_4_gib() -> None:
    size = (4 << 30) + 12345
    header = _wire.task_header(7, size)
    (length,) = _wire.LENGTH.unpack_from(header)
    assert length == _wire.TASK.size + size
    assert _wire.TASK.unpack_from(header, _wire.LENGTH.size)[0] == 7
    result = _wire.result_header(3, _wire.OK, 0.5, size)
    assert _wire.LENGTH.unpack_from(result)[0] == _wire.RESULT.size + size


def test_large_frames_travel_in_pieces_through_the_reader() -> None:
    """A frame bigger than one pipe read arrives whole, whatever the split."""
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        reader = _wire.FrameReader(r)
        body = os.urandom(3 << 20)
        data = _wire.result_header(9, _wire.OK, 0.0, len(body)) + body + _wire.result_frame(
            10, _wire.OK, 0.0, b"tail"
        )
        frames: list[_wire.Frame] = []
        view = memoryview(data)
        while view or not frames or len(frames) < 2:
            n = os.write(w, view[: 1 << 16]) if view else 0
            view = view[n:]
            frames += reader.read()
        assert len(frames) == 2
        assert bytes(frames[0][_wire.RESULT.size :]) == body
        assert bytes(frames[1][_wire.RESULT.size :]) == b"tail"
    finally:
        os.close(r)
        os.close(w)


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.skipif(
    os.environ.get("PROCTHROTTLE_BIG_FRAMES") != "1" or _mem_available() < (20 << 30),
    reason="moves a 4 GiB argument (about 12 GiB of RAM): set PROCTHROTTLE_BIG_FRAMES=1",
)
def test_an_argument_over_4_gib_travels() -> None:
    out = tasks.run_script(
        """
        import mmap, pickle
        import pool_tasks as tasks
        from procthrottle import ThrottledProcessPool

        if __name__ == "__main__":
            size = (4 << 30) + 5
            zeros = mmap.mmap(-1, size)  # untouched pages: no RAM until read
            with ThrottledProcessPool(2, 2) as pool:
                small = pool.submit(tasks.nap, 0.5)
                big = pool.submit(len, pickle.PickleBuffer(zeros))
                print(big.result(timeout=600), small.result(timeout=600))
        """,
        timeout=900,
    )
    assert _ok(out).split() == [str((4 << 30) + 5), "0.5"]


# -- 6. shutdown of idle workers is prompt, and they exit normally ---------------------------------
def _worker_processes(pool: ThrottledProcessPool) -> list[multiprocessing.process.BaseProcess]:
    return pool._engine.workers.processes()


def test_shutdown_is_prompt_with_two_fork_pools_in_one_program() -> None:
    fork = multiprocessing.get_context("fork")
    first = ThrottledProcessPool(2, 2, mp_context=fork)
    second = ThrottledProcessPool(2, 2, mp_context=fork)  # its workers hold first's pipes
    try:
        assert first.submit(tasks.square, 2).result(timeout=30) == 4
        assert second.submit(tasks.square, 3).result(timeout=30) == 9
        processes = _worker_processes(first)
        begin = time.monotonic()
        first.shutdown()
        assert time.monotonic() - begin < 2.0
        assert [p.exitcode for p in processes] == [0, 0]
    finally:
        first.shutdown()
        second.shutdown()


def test_shutdown_is_prompt_for_forkserver_with_a_forked_child_alive() -> None:
    fork = multiprocessing.get_context("fork")
    pool = ThrottledProcessPool(2, 2, mp_context=multiprocessing.get_context("forkserver"))
    assert pool.submit(tasks.square, 2).result(timeout=30) == 4
    sleeper = fork.Process(target=time.sleep, args=(20,))
    sleeper.start()
    try:
        processes = _worker_processes(pool)
        begin = time.monotonic()
        pool.shutdown()
        assert time.monotonic() - begin < 2.0
        assert [p.exitcode for p in processes] == [0, 0]
    finally:
        pool.shutdown()
        sleeper.kill()
        sleeper.join()


# -- 7. a result whose pickling raises SystemExit -------------------------------------------------
def test_a_result_whose_pickling_raises_systemexit_fails_with_a_pickling_error() -> None:
    with ThrottledProcessPool(1, 1) as pool:
        future = pool.submit(tasks.result_that_exits_when_pickled)
        with pytest.raises(pickle.PicklingError) as info:
            future.result(timeout=30)
        assert "SystemExit" in str(info.value)
        if sys.version_info >= (3, 11):
            assert any("result" in note for note in info.value.__notes__)
        assert pool.submit(tasks.square, 4).result(timeout=30) == 16


def test_an_argument_whose_pickling_raises_systemexit_fails_with_a_pickling_error() -> None:
    with ThrottledProcessPool(1, 1) as pool:
        future = pool.submit(tasks.square, tasks.ExitsWhenPickledArg())  # type: ignore[arg-type]
        with pytest.raises(pickle.PicklingError):
            future.result(timeout=30)
        assert pool.submit(tasks.square, 4).result(timeout=30) == 16


# -- issue 22: a cancel must not leave the manager asleep --------------------------------------
def test_a_cancel_of_the_only_sent_task_does_not_leave_the_manager_asleep(tmp_path: Path) -> None:
    """The manager skips the wake-up for a submit when a result is due soon; a cancel takes
    that result away, so the next submit must wake it (it hung on 3.12 under pytest)."""
    log = str(tmp_path / "log")
    with ThrottledProcessPool(1, 1, rate="1/2s") as pool:
        pool.submit(tasks.hold, log, 0.05).result(timeout=30)  # average 50 ms: the least depth
        waiting = pool.submit(tasks.hold, log, 0.0)  # sent; waits at the rate gate
        deadline = time.monotonic() + 10
        while pool.stats()["sent"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert waiting.cancel()
        with pytest.raises(CancelledError):
            waiting.result(timeout=0)
        assert pool.submit(tasks.square, 3).result(timeout=10) == 9


REMOVED_BEFORE_A_SPAWN = """
import multiprocessing, time
import pool_tasks as tasks
from procthrottle import ProcessSemaphore, ThrottledProcessPool

def remove(sem):
    sem.unlink()  # an anonymous set: removed from the host (the pool's handle stays open)

if __name__ == "__main__":
    sem = ProcessSemaphore(1)
    spawn = multiprocessing.get_context("spawn")
    pool = ThrottledProcessPool(1, semaphore=sem, mp_context=spawn, max_tasks_per_child=1)
    first = pool.submit(tasks.nap, 1.0)
    while not first.running():
        time.sleep(0.01)
    child = multiprocessing.get_context("fork").Process(target=remove, args=(sem,))
    child.start()
    child.join()
    first.result(timeout=30)  # it held its permit already; its replacement cannot open the set
    try:
        pool.submit(tasks.square, 2).result(timeout=30)
    except Exception as exc:
        print(type(exc).__name__, "|", exc)
    print("started", pool.stats()["workers_started"])
    pool.shutdown()
"""


def test_a_semaphore_gone_before_a_worker_starts_breaks_the_pool_naming_it() -> None:
    out = tasks.run_script(REMOVED_BEFORE_A_SPAWN, timeout=90)
    text = _ok(out)
    assert text.startswith("BrokenProcessPool | "), text
    assert "could not open the pool's semaphore" in text, text
    assert "SemaphoreClosedError" in text, text
    assert int(text.rsplit(" ", 1)[1]) == 2, text  # no retries: the cause is known
