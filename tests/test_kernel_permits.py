"""No stranded permit after close, release, fork or a signal; crash_safe=False stays bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import PYTHON, python_env, unique_name
from kernel_attack import KINDS, run_child
from procthrottle import ProcessSemaphore, SemaphoreClosedError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")


# -- no stranded permit ----------------------------------------------------------------------------
@pytest.mark.parametrize("crash_safe", KINDS)
def test_release_on_a_closed_handle_keeps_the_permit_releasable(crash_safe: bool) -> None:
    name = unique_name()
    first = ProcessSemaphore(1, name=name, crash_safe=crash_safe)
    second = ProcessSemaphore.open(name, crash_safe=crash_safe)
    assert first.acquire()
    first.close()
    with pytest.raises(SemaphoreClosedError):
        first.release()
    with pytest.raises(SemaphoreClosedError):
        first.acquire(block=False)
    assert second.value == 0
    second.release()  # the process still holds it: another handle returns it
    assert second.value == 1
    second.unlink()


@pytest.mark.parametrize("crash_safe", KINDS)
def test_close_while_another_thread_waits_gives_the_permit_back(crash_safe: bool) -> None:
    name = unique_name()
    waiting = ProcessSemaphore(1, name=name, crash_safe=crash_safe)
    holder = ProcessSemaphore.open(name, crash_safe=crash_safe)
    assert holder.acquire()
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(waiting.acquire(timeout=20))
        except SemaphoreClosedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    waiting.close()
    holder.release()
    thread.join(20)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], SemaphoreClosedError)
    assert holder.value == 1  # given back, not stranded
    holder.unlink()


SIGNAL_IN_THE_WINDOW = """
    import os, signal, sys, threading, time
    from procthrottle import ProcessSemaphore

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    signal.signal(signal.SIGUSR1, handler)
    crash_safe = sys.argv[1] == "True"
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    assert sem.acquire()
    # The main thread blocks SIGUSR1, so its wait is not interrupted; a helper thread takes the
    # signal (pending for the main thread's handler) and then frees the permit: the handler
    # runs right after the main thread's kernel operation succeeds.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    def helper():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        sem.release()

    threading.Thread(target=helper).start()
    try:
        got = sem.acquire(timeout=20)
    except Interrupted:
        got = "interrupted"
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    value = sem.value
    try:
        sem.release()  # the permit taken in the window must be releasable
        released = True
    except ValueError:
        released = False
    print(got, value, released, sem.value)
"""


@pytest.mark.parametrize("crash_safe", KINDS)
def test_signal_handler_exception_after_the_kernel_op_strands_nothing(crash_safe: bool) -> None:
    out = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(SIGNAL_IN_THE_WINDOW), str(crash_safe)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.split() == ["interrupted", "0", "True", "1"], out


NESTED_FORK = """
    import os, sys
    from procthrottle import ProcessSemaphore
    name = sys.argv[1]
    inherited = ProcessSemaphore(1, name=name)   # inherited by the child, never used there
    pid = os.fork()
    if pid == 0:
        mine = ProcessSemaphore(1, name=name)
        assert mine.acquire(block=False)          # the child holds the permit
        grandchild = os.fork()
        if grandchild == 0:
            try:
                inherited.release()               # never took it: must be refused
                os._exit(3)
            except ValueError:
                os._exit(0)
        _, status = os.waitpid(grandchild, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), inherited.value)
    inherited.unlink()
"""


def test_grandchild_cannot_release_a_permit_it_never_took() -> None:
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(NESTED_FORK), unique_name()],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["0", "1"], result.stderr


# -- crash_safe=False is bounded ------------------------------------------------------------------
RELEASE_RACE = """
    import multiprocessing as mp, sys
    from procthrottle import ProcessSemaphore

    ROUNDS, RACERS = 300, 4

    def release(sem, barrier, out):
        for _ in range(ROUNDS):
            barrier.wait()
            try:
                sem.release()
                out.put(1)
            except ValueError:
                out.put(0)
            barrier.wait()

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        for limit in (1, 4):
            sem = ProcessSemaphore(limit, crash_safe=False)
            barrier, out = ctx.Barrier(RACERS + 1), ctx.Queue()
            procs = [ctx.Process(target=release, args=(sem, barrier, out)) for _ in range(RACERS)]
            for p in procs:
                p.start()
            worst = accepted = 0
            for _ in range(ROUNDS):
                barrier.wait()
                barrier.wait()
                results = [out.get(timeout=10) for _ in procs]
                worst, accepted = max(worst, sem.value), accepted + sum(results)
                while sem.value > limit:  # repair, so that every round starts full
                    sem.acquire()
            for p in procs:
                p.join(10)
            print(limit, worst, accepted)
"""


def test_racing_releases_on_a_full_posix_semaphore_never_exceed_the_limit() -> None:
    out = run_child(RELEASE_RACE, timeout=120).stdout.split()
    assert out == ["1", "1", "0", "4", "4", "0"]  # no release of a full semaphore accepted


WIDENED_RELEASE_RACE = """
    import multiprocessing as mp, time
    from procthrottle import ProcessSemaphore

    def release(sem, barrier, out):
        # both releases reach the kernel together: each one's semop checks and adds at once
        from procthrottle._kernel import _shared
        semop = _shared._semop
        def late_semop(*args):
            time.sleep(0.3)
            return semop(*args)
        _shared._semop = late_semop
        barrier.wait(10)
        try:
            sem.release(2)
            out.put(1)
        except ValueError:
            out.put(0)

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        sem = ProcessSemaphore(4, crash_safe=False)
        assert sem.acquire() and sem.acquire()
        out, barrier = ctx.Queue(), ctx.Barrier(2)
        procs = [ctx.Process(target=release, args=(sem, barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        accepted = out.get(timeout=10) + out.get(timeout=10)
        for p in procs:
            p.join(10)
        print(sem.value, accepted)
"""


def test_two_release_n_racing_on_posix_accept_only_what_fits() -> None:
    assert run_child(WIDENED_RELEASE_RACE).stdout.split() == ["4", "1"]


def test_refused_release_n_changes_nothing() -> None:
    sem = ProcessSemaphore(4, crash_safe=False)
    assert sem.acquire()
    assert sem.acquire()
    with pytest.raises(ValueError, match="above limit=4"):
        sem.release(3)
    for huge in (5, 40000, 2**40):  # beyond the limit, beyond a semop's short: refused at once
        with pytest.raises(ValueError, match="above limit=4"):
            sem.release(huge)
    assert sem.value == 2
    sem.release(2)
    assert sem.value == 4
    with pytest.raises(ValueError):
        sem.release()
    assert sem.value == 4


@pytest.mark.parametrize("crash_safe", KINDS)
def test_anonymous_objects_of_a_killed_creator_are_swept(crash_safe: bool) -> None:
    code = f"""
        import os, signal
        from procthrottle import ProcessSemaphore
        s = ProcessSemaphore(1, crash_safe={crash_safe})
        print(s._semid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    left = run_child(code, returncode=-signal.SIGKILL).stdout.strip()
    assert int(left) in {
        int(line.split()[1]) for line in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    }
    run_child(
        "from procthrottle import ProcessSemaphore\n"
        f"ProcessSemaphore(1, crash_safe={crash_safe}).close()"
    )
    assert int(left) not in {
        int(line.split()[1]) for line in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    }


