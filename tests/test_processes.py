"""ProcessSemaphore across real processes: start methods, pools, SIGKILL, kernel clean-up."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _leaks import sets_left_since
from helpers import PYTHON, max_overlap, python_env, read_intervals, sysv_sets, unique_name
from procthrottle import ProcessSemaphore
from procthrottle._kernel._sysv import SysVSemaphore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_seed_example_bound_is_exactly_the_limit(method: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    out = subprocess.run(
        [PYTHON, str(EXAMPLES / "seed_semaphore.py"), "--start-method", method,
         "--record", str(record)],
        env=python_env(), capture_output=True, text=True, timeout=50, check=True,
    ).stdout
    intervals = read_intervals(record)
    assert len(intervals) == 9  # ten processes, one SIGKILLed while holding a permit
    assert max_overlap(intervals) == 2
    assert out.count("got value") == 9
    assert "free permits now: 2/2" in out
    assert "[-9]" in out


def _hold_and_record(sem: ProcessSemaphore, record: str, seconds: float) -> int:
    with sem:
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
    with open(record, "a") as f:
        f.write(f"{os.getpid()} {start} {end}\n")
    return os.getpid()


def _try_acquire(sem: ProcessSemaphore, timeout: float) -> bool:
    got = sem.acquire(timeout=timeout)
    if got:
        sem.release()
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("crash_safe", [True, False], ids=["crash_safe", "posix"])
def test_passed_to_process_pool_submit_and_map(
    method: str, crash_safe: bool, tmp_path: Path
) -> None:
    sem = ProcessSemaphore(2, crash_safe=crash_safe)
    record = tmp_path / "intervals"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        assert sem.acquire()
        assert sem.acquire()  # the parent holds every permit
        assert pool.submit(_try_acquire, sem, 0.2).result(timeout=30) is False
        sem.release(2)
        assert pool.submit(_try_acquire, sem, 5).result(timeout=30) is True
        futures = [pool.submit(_hold_and_record, sem, str(record), 0.15) for _ in range(8)]
        pids = {f.result(timeout=30) for f in futures}
        pids |= set(pool.map(_hold_and_record, [sem] * 4, [str(record)] * 4, [0.05] * 4))
    assert len(pids) >= 2
    intervals = read_intervals(record)
    assert len(intervals) == 12
    assert max_overlap(intervals) == 2
    assert sem.value == 2
    sem.close()


def _initializer(sem: ProcessSemaphore) -> None:
    global _POOL_SEM
    _POOL_SEM = sem


_POOL_SEM: ProcessSemaphore | None = None


def _use_pool_sem(record: str) -> int:
    assert _POOL_SEM is not None
    return _hold_and_record(_POOL_SEM, record, 0.1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_pool_initializer_and_process_args(method: str, tmp_path: Path) -> None:
    sem = ProcessSemaphore(1)
    record = tmp_path / "intervals"
    ctx: Any = multiprocessing.get_context(method)
    with ctx.Pool(3, initializer=_initializer, initargs=(sem,)) as pool:
        pool.map(_use_pool_sem, [str(record)] * 6)
    procs = [ctx.Process(target=_hold_and_record, args=(sem, str(record), 0.05)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    intervals = read_intervals(record)
    assert len(intervals) == 9
    assert max_overlap(intervals) == 1
    assert sem.value == 1
    sem.close()


HOLDER = textwrap.dedent(
    """
    import pickle, sys, time
    from procthrottle import ProcessSemaphore
    arg = sys.argv[1]
    if arg.startswith("name:"):
        sem = ProcessSemaphore(1, name=arg[5:])
    else:
        sem = pickle.loads(bytes.fromhex(arg))
    assert sem.acquire(timeout=10)
    print("held", flush=True)
    time.sleep(60)
    """
)


def _kill_holder_and_reacquire(sem: ProcessSemaphore, arg: str) -> bool:
    child = subprocess.Popen(
        [PYTHON, "-c", HOLDER, arg], env=python_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        assert sem.value == 0
        child.send_signal(signal.SIGKILL)
        got = sem.acquire(timeout=1.0)  # no wait(): the permit must come back by itself
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    if got:
        sem.release()
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["anonymous", "named"])
def test_sigkilled_holder_returns_its_permit_100_times(kind: str) -> None:
    if kind == "named":
        name = unique_name()
        sem = ProcessSemaphore(1, name=name)
        arg = f"name:{name}"
    else:
        sem = ProcessSemaphore(1)
        arg = pickle.dumps(sem).hex()
    results = [_kill_holder_and_reacquire(sem, arg) for _ in range(100)]
    assert results.count(True) == 100
    assert sem.value == 1
    if kind == "named":
        sem.unlink()
    else:
        sem.close()


def test_multiprocessing_semaphore_loses_the_permit_we_keep() -> None:
    """The motivating failure, shown side by side with ours under fork."""
    ctx = multiprocessing.get_context("fork")
    theirs, ours = ctx.Semaphore(1), ProcessSemaphore(1)

    def hold_forever() -> None:
        assert theirs.acquire()
        assert ours.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    p = ctx.Process(target=hold_forever)
    p.start()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert theirs.acquire(timeout=0.2) is False
    assert ours.acquire(timeout=1.0) is True
    ours.release()
    ours.close()


def test_release_in_another_process_is_a_clear_error() -> None:
    sem = ProcessSemaphore(1)
    ctx = multiprocessing.get_context("fork")
    assert sem.acquire()
    with (
        ProcessPoolExecutor(1, mp_context=ctx) as pool,
        pytest.raises(ValueError, match="must be released by that process"),
    ):
        pool.submit(sem.release).result(timeout=10)
    assert sem.value == 0
    sem.release()
    assert sem.value == 1
    sem.close()


def test_posix_kernel_allows_release_in_another_process() -> None:
    sem = ProcessSemaphore(1, crash_safe=False)
    assert sem.acquire()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(sem.release).result(timeout=30)
    assert sem.value == 1
    sem.close()


def test_forked_child_holds_nothing_of_the_parents_permits() -> None:
    sem = ProcessSemaphore(2)
    assert sem.acquire()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            sem.release()
            code = 3  # must not be allowed: the parent holds that permit
        except ValueError:
            code = 0 if sem.acquire(block=False) else 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sem.value == 1  # the child's permit came back when it exited
    sem.release()
    sem.close()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("other_procthrottle_user")
def test_200_anonymous_semaphores_leave_no_kernel_object() -> None:
    before = sysv_sets()
    script = textwrap.dedent(
        """
        import os, pickle
        from procthrottle import ProcessSemaphore
        from procthrottle._kernel import _libc, _naming
        def count():  # the sets this process made or used last (the host may be shared)
            mine = 0
            for info in _libc.own_sets():
                try:
                    mine += _libc.getctl(info.semid, _naming.ATTACH, _libc.GETPID) == os.getpid()
                except OSError:
                    pass
            return mine
        start = count()
        for i in range(200):
            sem = ProcessSemaphore(2)
            copy = pickle.loads(pickle.dumps(sem))
            sem.acquire(); sem.release()
            del sem, copy
        assert count() == start, (count(), start)
        kept = [ProcessSemaphore(1) for _ in range(5)]   # alive at exit: removed by finalizers
        print("ok", flush=True)
        """
    )
    out = subprocess.run(
        [PYTHON, "-c", script], env=python_env(), capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"
    assert not sets_left_since(before)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("other_procthrottle_user")
def test_sets_are_removed_after_spawned_children_exit() -> None:
    before = sysv_sets()
    script = textwrap.dedent(
        """
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from procthrottle import ProcessSemaphore
        def use(sem):
            with sem:
                return sem.limit
        if __name__ == "__main__":
            sems = [ProcessSemaphore(i + 1) for i in range(5)]
            with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
                assert list(pool.map(use, sems)) == [1, 2, 3, 4, 5]
            print("ok", flush=True)
        """
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pt_spawn_{os.getpid()}.py"
    path.write_text(script)
    try:
        out = subprocess.run(
            [PYTHON, str(path)], env=python_env(), capture_output=True, text=True, timeout=50
        )
    finally:
        path.unlink()
    assert out.returncode == 0, out.stderr
    assert not sets_left_since(before)


def test_killed_creator_of_named_semaphore_does_not_break_it() -> None:
    name = unique_name()
    script = (
        "import os, signal, sys; from procthrottle import ProcessSemaphore; "
        f"s = ProcessSemaphore(2, name={name!r}); s.acquire(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([PYTHON, "-c", script], env=python_env(), timeout=30, check=False)
    sem = ProcessSemaphore(2, name=name)
    assert isinstance(sem, SysVSemaphore)
    assert sem.value == 2
    assert sem.attached == 1
    sem.unlink()
