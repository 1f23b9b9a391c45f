"""ProcessSemaphore under attack: creation races, other users, stranded permits, odd timeouts.

Race windows are widened deterministically (a creator stopped with SIGSTOP right after its
``semget``, a signal made pending while a thread waits); anything that could hang runs in a
child process or thread with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _leaks import Snapshot, leaked_since
from helpers import PYTHON, python_env, unique_name
from procthrottle import AsyncSemaphore, ProcessSemaphore, SemaphoreClosedError
from procthrottle._kernel import _inventory, _libc, _naming, _posix
from procthrottle._kernel._semaphore import _HoldsPermits

KINDS = [pytest.param(True, id="crash_safe"), pytest.param(False, id="posix")]
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result


def sets_with_key(key: int) -> list[int]:
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    return [int(f.split()[1]) for f in lines if int(f.split()[0]) == key]


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
    assert not _posix.exists(name)


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


def test_half_made_posix_names_open_after_recovery_and_unlink() -> None:
    from _multiprocessing import SemLock

    name = unique_name()
    limit_name = _posix.os_names(name)[2]
    SemLock(1, 2, 2, limit_name, False)  # the creator died after its first sem_open
    start = time.monotonic()
    sem = ProcessSemaphore.open(name, crash_safe=False)
    assert time.monotonic() - start < 0.5
    assert (sem.limit, sem.value) == (2, 2)
    sem.unlink()
    SemLock(1, 2, 2, limit_name, False)
    assert _posix.unlink_named(name)
    assert not _posix.exists(name)


# -- another user --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_user() -> Iterator[int]:
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


def as_user(uid: int, code: str, gid: int | None = None) -> None:
    """Run ``code`` in a forked child that became user ``uid`` (group ``gid``, else its own)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            os.setgroups([])
            os.setgid(uid if gid is None else gid)
            os.setuid(uid)
            exec(textwrap.dedent(code), {})
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_squatted_system_v_key_is_refused(other_user: int) -> None:
    name = unique_name()
    key, hi_lo = _naming.key(name), _naming.tag(name)
    as_user(
        other_user,
        f"""
        from procthrottle._kernel import _libc
        semid = _libc.create_empty({key}, 5, 0o666)
        values = ((0, 100, 0), (2, 1, 0), (3, {hi_lo[0]}, 0), (4, {hi_lo[1]}, 0))
        _libc.semop(semid, _libc.ops(*values))
    """,
    )
    try:
        with pytest.raises(PermissionError, match="owned by another user"):
            ProcessSemaphore(1, name=name)
        with pytest.raises(PermissionError, match="another user"):
            ProcessSemaphore.open(name)
        with pytest.raises(PermissionError):
            ProcessSemaphore(1, name=name, mode=0o660)  # not our group's
    finally:
        semids = sets_with_key(key)
        for semid in semids:
            _libc.remove(semid)
    assert len(semids) == 1


def test_squatted_dev_shm_files_are_refused(other_user: int) -> None:
    name = unique_name()
    as_user(
        other_user,
        f"""
        import os
        from _multiprocessing import SemLock
        for n in {_posix.os_names(name)!r}:
            SemLock(1, 100, 100, n, False)
            os.chmod("/dev/shm/sem." + n[1:], 0o666)
    """,
    )
    try:
        with pytest.raises(PermissionError, match="owned by another user"):
            ProcessSemaphore(1, name=name, crash_safe=False)
    finally:
        assert _posix.unlink_named(name)


def test_sharing_is_opt_in_with_mode(other_user: int) -> None:
    name = unique_name()
    as_user(
        other_user,
        f"""
        from procthrottle import ProcessSemaphore
        for crash_safe in (True, False):
            name = {name!r} + str(crash_safe)
            s = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o666)
            s.close()
    """,
    )
    for crash_safe in (True, False):
        shared = f"{name}{crash_safe}"
        with pytest.raises(PermissionError):
            ProcessSemaphore(1, name=shared, crash_safe=crash_safe)
        sem = ProcessSemaphore(1, name=shared, crash_safe=crash_safe, mode=0o666)
        assert sem.acquire(block=False)
        assert not sem.acquire(block=False)
        sem.release()
        sem.unlink()


@pytest.mark.parametrize("crash_safe", KINDS)
def test_group_sharing_accepts_only_a_group_of_ours(other_user: int, crash_safe: bool) -> None:
    name = unique_name()
    as_user(
        other_user,
        f"""
        from procthrottle import ProcessSemaphore
        s = ProcessSemaphore(1, name={name!r}, crash_safe={crash_safe}, mode=0o660)
        s.close()
        """,
        gid=os.getegid(),  # a group the test process is in
    )
    try:
        with pytest.raises(PermissionError, match="another user"):
            ProcessSemaphore(1, name=name, crash_safe=crash_safe)  # owner-only: refused
        with pytest.raises(PermissionError, match="same sharing"):
            ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o606)  # not for others
        sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o660)
        assert sem.acquire(block=False)
        sem.release()
        sem.close()
    finally:
        _inventory.unlink_any(name)


@pytest.mark.parametrize("crash_safe", KINDS)
def test_named_objects_get_the_mode_asked_for(crash_safe: bool) -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o660)
    try:
        if crash_safe:
            assert _naming.credentials_by_id(sem._semid)[3] & 0o777 == 0o660  # type: ignore[attr-defined]
        else:
            for os_name in _posix.os_names(name):
                assert os.stat(f"/dev/shm/sem.{os_name[1:]}").st_mode & 0o777 == 0o660
    finally:
        sem.unlink()
    with pytest.raises(ValueError, match="0o600"):
        ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o644 & ~0o200)
    with pytest.raises(TypeError):
        ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode="0o600")  # type: ignore[arg-type]


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

    class SlowRead:  # widens the window between reading the value and posting
        def __init__(self, lock):
            self.lock = lock
        def _get_value(self):
            value = self.lock._get_value()
            time.sleep(0.3)
            return value
        def __getattr__(self, attr):
            return getattr(self.lock, attr)

    def slow(post):
        def post_then_sleep():  # widens the window between two posts of one release(n)
            post()
            time.sleep(0.2)
        return post_then_sleep

    def release(sem, barrier, out):
        for attr in ("_release", "_free_release"):  # the kernel's post, before and after
            if attr in vars(sem):
                setattr(sem, attr, slow(getattr(sem, attr)))
        sem._lock = SlowRead(sem._lock)
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
        print(s._semid if {crash_safe} else s._os_name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    left = result.stdout.strip()
    if crash_safe:
        assert int(left) in {
            int(line.split()[1]) for line in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
        }
    else:
        assert Path(f"/dev/shm/sem.{left[1:]}").exists()
    run_child(
        "from procthrottle import ProcessSemaphore\n"
        f"ProcessSemaphore(1, crash_safe={crash_safe}).close()"
    )
    if crash_safe:
        assert int(left) not in {
            int(line.split()[1]) for line in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
        }
    else:
        assert not Path(f"/dev/shm/sem.{left[1:]}").exists()


# -- timeouts and errors ------------------------------------------------------------
@pytest.mark.parametrize("crash_safe", KINDS)
@pytest.mark.parametrize("timeout", [2.0**63, 1e300, float("inf"), 10**400])
def test_huge_timeouts_wait_and_never_damage_the_handle(crash_safe: bool, timeout: float) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    assert sem.acquire(timeout=timeout)
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(sem.acquire(timeout=timeout)))
    thread.start()
    time.sleep(0.2)
    assert got == []  # it waits
    sem.release()
    thread.join(10)
    assert got == [True]
    sem.release()
    assert sem.value == 1
    sem.close()


@pytest.mark.parametrize("crash_safe", KINDS)
@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": True}, TypeError),
        ({"timeout": "1"}, TypeError),
        ({"block": False, "timeout": 1}, ValueError),
    ],
)
def test_bad_timeouts_are_refused_the_same_way(
    crash_safe: bool, kwargs: dict[str, object], exc: type[Exception]
) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    with pytest.raises(exc):
        sem.acquire(**kwargs)  # type: ignore[arg-type]
    assert sem.value == 1
    assert sem.acquire(block=False)
    sem.release()
    sem.close()


def test_too_many_handles_is_reported_as_such() -> None:
    sem = ProcessSemaphore(1)
    setval = 16
    attached = _libc.getval(sem._semid, _naming.ATTACH)  # type: ignore[attr-defined]
    assert _libc._semctl(sem._semid, _naming.ATTACH, setval, 32767) == 0  # type: ignore[attr-defined]
    try:
        with pytest.raises(OSError, match="too many handles") as info:
            pickle.loads(pickle.dumps(sem))
        assert not isinstance(info.value, SemaphoreClosedError)
    finally:
        _libc._semctl(sem._semid, _naming.ATTACH, setval, attached)  # type: ignore[attr-defined]
    sem.close()


def test_limit_errors_suggest_only_what_helps() -> None:
    with pytest.raises(ValueError, match="crash_safe=False"):
        ProcessSemaphore(40000)
    with pytest.raises(ValueError) as info:
        ProcessSemaphore(2**31)
    assert "crash_safe=False" not in str(info.value)


def test_async_with_names_the_async_adapter() -> None:
    sem = ProcessSemaphore(1)

    async def main() -> None:
        with pytest.raises(TypeError, match="AsyncSemaphore") as info:
            async with sem:
                pass  # pragma: no cover
        assert "SysVSemaphore" not in str(info.value)
        async with AsyncSemaphore(sem):
            assert sem.value == 0

    asyncio.run(main())
    assert sem.value == 1
    sem.close()


def test_the_mixin_is_private() -> None:
    import procthrottle

    assert not hasattr(procthrottle, "HoldsPermits")
    assert _HoldsPermits.__name__.startswith("_")
    assert ProcessSemaphore.__bases__ == (_HoldsPermits,)


# -- inventory for the CLI ------------------------------------------------------------
def test_list_named_shows_both_kernels() -> None:
    name = unique_name()
    safe = ProcessSemaphore(3, name=name)
    fast = ProcessSemaphore(2, name=name + "-f", crash_safe=False)
    try:
        assert safe.acquire()
        listed = {(i.name, i.crash_safe): i for i in _inventory.list_named()}
        info = listed[(name, True)]
        assert (info.limit, info.value, info.held, info.attached) == (3, 2, 1, 1)
        assert info.last_pid == os.getpid()
        assert (listed[(name + "-f", False)].limit, listed[(name + "-f", False)].value) == (2, 2)
        assert _inventory.named_info(name) == [info]
        safe.release()
    finally:
        safe.unlink()
        fast.unlink()
    assert _inventory.named_info(name) == []
    fast = ProcessSemaphore(1, name=name, crash_safe=False)
    assert _inventory.unlink_any(name)
    assert not _inventory.unlink_any(name)
    names = {i.name for i in _inventory.list_named()}
    assert name not in names
    assert name + "-f" not in names
