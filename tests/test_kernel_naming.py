"""ProcessSemaphore names under attack: the suite's own leak check, and one name = one semaphore
whatever the timing of concurrent, stalled or killed creators (windows widened on purpose)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from _leaks import Snapshot, leaked_since
from helpers import PYTHON, python_env, unique_name
from kernel_attack import KINDS, run_child, sets_with_key
from procthrottle import ProcessSemaphore
from procthrottle._kernel import _libc, _naming

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")


# -- the suite's own leak check ---------------------------------------------------------------
def test_leak_check_counts_only_our_objects() -> None:
    import sysv_ipc

    before = Snapshot.take()
    foreign = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX)  # another program's set
    stranger = subprocess.Popen(  # another procthrottle program, alive
        [
            PYTHON,
            "-c",
            "import procthrottle, sys; s = procthrottle.ProcessSemaphore(2); "
            "print(1, flush=True); sys.stdin.read()",
        ],
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "1"
        assert leaked_since(before) == []
        name = unique_name()
        leaked = ProcessSemaphore(1, name=name)
        assert any(name in item for item in leaked_since(before))
        leaked.unlink()
        assert leaked_since(before) == []
    finally:
        foreign.remove()
        assert stranger.stdin is not None
        stranger.stdin.close()
        stranger.wait(10)
        assert stranger.stdout is not None
        stranger.stdout.close()


# -- one name, one semaphore -------------------------------------------------------------------
STALLED_CREATOR = """
    import os, signal, sys
    from procthrottle import ProcessSemaphore
    from procthrottle._kernel import _libc
    real = _libc.create_empty
    def create_then_stop(*args):
        semid = real(*args)
        print("created", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # stalled between semget and set-up
        return semid
    _libc.create_empty = create_then_stop
    sem = ProcessSemaphore(1, name=sys.argv[1])
    print("limit", sem.limit, sem.acquire(timeout=0.2), flush=True)
"""


@pytest.mark.parametrize("fate", ["stalled", "killed"])
def test_stalled_or_killed_creator_never_makes_a_second_set(fate: str) -> None:
    name = unique_name()
    creator = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(STALLED_CREATOR), name],
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "created"
        deadline = time.monotonic() + 10
        while Path(f"/proc/{creator.pid}/stat").read_text().split()[2] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if fate == "killed":
            creator.kill()
            creator.wait(10)
        start = time.monotonic()
        sem = ProcessSemaphore(1, name=name)  # finishes the half-made set at once
        assert time.monotonic() - start < 1.0
        assert sem.acquire(block=False)
        with pytest.raises(ValueError, match="limit=1"):
            ProcessSemaphore(2, name=name)
        assert len(sets_with_key(_naming.key(name))) == 1
        if fate == "stalled":
            os.kill(creator.pid, signal.SIGCONT)
            out, _ = creator.communicate(timeout=10)
            assert out.split() == ["limit", "1", "False"]  # same set: our permit blocks it
        again = ProcessSemaphore.open(name)
        assert again.limit == 1
        assert again.value == 0
        sem.release()
        assert again.value == 1
        again.close()
        sem.unlink()
        assert sets_with_key(_naming.key(name)) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(creator.pid, signal.SIGKILL)
        creator.wait(10)
        if creator.stdout is not None:
            creator.stdout.close()


RACE = """
    import multiprocessing as mp, os, sys
    from procthrottle import ProcessSemaphore

    def create(name, barrier, limit, out):
        barrier.wait()
        try:
            sem = ProcessSemaphore(limit, name=name)
        except ValueError as exc:
            out.put((type(exc).__name__, limit))  # exactly ValueError: a limit mismatch
        else:
            out.put((sem._semid, sem.acquire(block=False)))
        barrier.wait(30)  # everyone keeps what it holds until all have tried

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        for round_ in range(int(sys.argv[1])):
            name = f"pt-race-{os.getpid()}-{round_}"
            barrier, out = ctx.Barrier(6), ctx.Queue()
            limits = [1, 1, 1, 1, 1, 2]
            procs = [ctx.Process(target=create, args=(name, barrier, lim, out)) for lim in limits]
            for p in procs:
                p.start()
            results = [out.get(timeout=30) for _ in procs]
            for p in procs:
                p.join(30)
            semids = {r[0] for r in results if r[0] != "ValueError"}
            holders = sum(1 for r in results if r[1] is True)
            refused = [r for r in results if r[0] == "ValueError"]
            try:
                sem, limit = ProcessSemaphore(1, name=name), 1
            except ValueError:
                sem, limit = ProcessSemaphore(2, name=name), 2
            sem.unlink()
            # the limit-2 creator either won (all limit-1 creators refused) or was refused
            assert len(semids) == 1, results
            assert holders == 1, results  # two sets would let two in
            assert len(refused) == (1 if limit == 1 else 5), results
        print("ok")
"""


def test_simultaneous_creators_meet_on_one_set() -> None:
    assert run_child(RACE.replace("sys.argv[1]", "60"), timeout=120).stdout.strip() == "ok"


@pytest.mark.parametrize("first", [True, False])
def test_a_name_of_the_other_kernel_is_a_clear_error(first: bool) -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name, crash_safe=first)
    try:
        with pytest.raises(ValueError, match=f"already exists with crash_safe={first}"):
            ProcessSemaphore(1, name=name, crash_safe=not first)
        with pytest.raises(FileNotFoundError, match=f"crash_safe={first}"):
            ProcessSemaphore.open(name, crash_safe=not first)
    finally:
        sem.unlink()
    assert not _naming.exists(name)


@pytest.mark.parametrize("crash_safe", KINDS)
def test_open_reads_the_limit_and_refuses_missing_names(crash_safe: bool) -> None:
    name = unique_name()
    with pytest.raises(FileNotFoundError, match=r"no .*semaphore named"):
        ProcessSemaphore.open(name, crash_safe=crash_safe)
    sem = ProcessSemaphore(3, name=name, crash_safe=crash_safe)
    opened = ProcessSemaphore.open(name, crash_safe=crash_safe)
    assert (opened.limit, opened.name, opened.crash_safe) == (3, name, crash_safe)
    assert opened.acquire(block=False)
    assert sem.value == 2
    opened.release()
    opened.close()
    sem.unlink()


def test_half_made_sets_open_after_recovery_and_unlink() -> None:
    name = unique_name()
    semid = _libc.create_empty(_naming.key(name), _naming.NSEMS, 0o600)  # creator died here
    assert semid is not None
    with pytest.raises(FileNotFoundError, match="half-made"):
        ProcessSemaphore.open(name)
    assert _naming.find_named(name) is not None
    from procthrottle._kernel import _sysv

    assert _sysv.unlink_named(name)  # removable as it is
    assert _libc.create_empty(_naming.key(name), _naming.NSEMS, 0o600) is not None
    start = time.monotonic()
    sem = ProcessSemaphore(2, name=name)  # or finished by the next creator, at once
    assert time.monotonic() - start < 0.5
    assert (sem.limit, sem.value) == (2, 2)
    sem.unlink()


def test_half_made_crash_safe_false_sets_open_after_recovery_and_unlink() -> None:
    name = unique_name()
    key = _naming.key(name)
    assert _libc.create_empty(key, _naming.NSEMS_SHARED, 0o600) is not None  # creator died
    with pytest.raises(FileNotFoundError, match="half-made"):
        ProcessSemaphore.open(name, crash_safe=False)
    with pytest.raises(ValueError, match="crash_safe=False"):  # a crash-safe creator: refused
        ProcessSemaphore(2, name=name)
    start = time.monotonic()
    sem = ProcessSemaphore(2, name=name, crash_safe=False)  # finished by the next creator
    assert time.monotonic() - start < 0.5
    assert (sem.limit, sem.value) == (2, 2)
    sem.unlink()
    assert _libc.create_empty(key, _naming.NSEMS_SHARED, 0o600) is not None
    from procthrottle._kernel import _sysv

    assert not _sysv.unlink_named(name, True)  # not the crash-safe kernel's
    assert _sysv.unlink_named(name, False)
    assert not _naming.exists(name)


