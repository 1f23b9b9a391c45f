"""Named rate limiters under attack: creation races, stalled and dead creators, other users, kinds.

The rules are ProcessSemaphore's (tests/test_kernel_*.py): one name is one limiter
whatever the timing, nobody waits for a creator, another user's object is never attached to,
and one name is one kind of object. Race windows are widened deterministically in children
(a sleep patched after every key lookup, a creator stopped with SIGSTOP right after its
``semget``, a sleep between the kind check and the creation); whatever could hang runs in a
child process with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _leaks import made_since
from helpers import PYTHON, python_env, sysv_sets, unique_name
from kernel_attack import as_user, run_child, sets_with_key
from procthrottle import ProcessSemaphore, RateLimiter, SemaphoreClosedError
from procthrottle._kernel import _inventory, _libc, _naming
from procthrottle._kernel._owner import NameConflictError
from procthrottle._rate import _store
from procthrottle._rate._layout import Layout

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only"),
]


@pytest.fixture
def named() -> Iterator[str]:
    name = unique_name("pt-rname")
    yield name
    _inventory.unlink_any(name)


# -- one name, one limiter -----------------------------------------------------------------------
RACE = """
    import multiprocessing as mp, os, random, sys, time
    from procthrottle import RateLimiter
    from procthrottle._kernel import _libc

    real_lookup = _libc.lookup
    def slow_lookup(key):  # widens every window between looking a key up and acting on it
        found = real_lookup(key)
        time.sleep(random.random() * 0.003)
        return found

    def create(name, barrier, burst, out):
        _libc.lookup = slow_lookup
        barrier.wait()
        try:
            limiter = RateLimiter(1, per=60, burst=burst, name=name)
        except ValueError as exc:
            out.put(("refused", burst, str(exc)))
        else:
            out.put((limiter._store.semid, burst, limiter.acquire(block=False)))
        barrier.wait(30)  # everyone keeps what it took until all have tried

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        for round_ in range(int(sys.argv[1])):
            name = f"pt-rrace-{os.getpid()}-{round_}"
            barrier, out = ctx.Barrier(6), ctx.Queue()
            bursts = [1, 1, 1, 1, 1, 2]
            procs = [ctx.Process(target=create, args=(name, barrier, b, out)) for b in bursts]
            for p in procs:
                p.start()
            results = [out.get(timeout=30) for _ in procs]
            for p in procs:
                p.join(30)
            semids = {r[0] for r in results if r[0] != "refused"}
            refused = [r for r in results if r[0] == "refused"]
            taken = sum(1 for r in results if r[2] is True)
            winner = 2 if any(r[1] == 2 and r[0] != "refused" for r in results) else 1
            from procthrottle._rate import _store
            found = _store.find_named(name)
            assert found is not None and {found[1]} == semids, (results, found)
            assert _store.unlink_named(name)
            assert _store.find_named(name) is None, results  # no second set left over
            assert len(semids) == 1, results
            assert taken == 1, results  # one set allows one acquisition now; two sets, two
            assert len(refused) == (1 if winner == 1 else 5), results
            assert all("already exists" in r[2] for r in refused), results
        print("ok")
"""


def test_simultaneous_creators_meet_on_one_set() -> None:
    code = RACE.replace("sys.argv[1]", "60")
    assert run_child(code, timeout=240).stdout.strip() == "ok"


STALLED_CREATOR = """
    import os, signal, sys
    from procthrottle import RateLimiter
    from procthrottle._kernel import _libc

    real = _libc._semget
    class StopAfterCreate:  # the creator stalls right after its semget made the set
        def __call__(self, key, nsems, flags):
            semid = real(key, nsems, flags)
            if semid >= 0 and flags & _libc.IPC_EXCL:
                print("created", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
            return semid
    _libc._semget = StopAfterCreate()
    try:
        limiter = RateLimiter(1, per=60, burst=int(sys.argv[2]), name=sys.argv[1])
    except ValueError as exc:
        print("refused:", exc, flush=True)
    else:
        print("semid", limiter._store.semid, limiter.acquire(block=False), flush=True)
"""


def _stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().split()[2] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.01)


@contextlib.contextmanager
def stalled_creator(name: str, burst: int) -> Iterator[subprocess.Popen[str]]:
    """A process creating the limiter ``name``, stopped right after its ``semget``."""
    creator = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(STALLED_CREATOR), name, str(burst)],
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "created"
        _stopped(creator.pid)
        yield creator
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(creator.pid, signal.SIGKILL)
        creator.wait(10)
        if creator.stdout is not None:
            creator.stdout.close()


@pytest.mark.parametrize("fate", ["stalled", "killed"])
def test_stalled_or_killed_creator_delays_nobody_and_makes_no_second_set(
    fate: str, named: str
) -> None:
    with stalled_creator(named, 1) as creator:
        if fate == "killed":
            creator.kill()
            creator.wait(10)
        start = time.monotonic()
        limiter = RateLimiter(1, per=60, name=named)  # finishes the half-made set at once
        assert time.monotonic() - start < 1.0
        assert limiter.acquire(block=False)
        with pytest.raises(ValueError, match="already exists"):
            RateLimiter(1, per=60, burst=2, name=named)
        assert sets_with_key(_naming.rate_key(named)) == [limiter._store.semid]
        if fate == "stalled":
            os.kill(creator.pid, signal.SIGCONT)
            out, _ = creator.communicate(timeout=30)
            # the same set: our acquisition used its burst
            assert out.split() == ["semid", str(limiter._store.semid), "False"]
        start = time.monotonic()
        again = RateLimiter(1, per=60, name=named)  # later opens are not slowed either
        assert time.monotonic() - start < 1.0
        assert not again.acquire(block=False)
        again.close()
        limiter.unlink()
        assert sets_with_key(_naming.rate_key(named)) == []


def test_stalled_creator_of_other_rates_is_refused_when_it_resumes(named: str) -> None:
    """Its set was finished meanwhile by an opener with other rates: the creator must not use
    it as if it held its own (it would run at a rate nobody else keeps)."""
    with stalled_creator(named, 2) as creator:
        limiter = RateLimiter(1, per=60, name=named)  # burst 1: finishes the set its way
        os.kill(creator.pid, signal.SIGCONT)
        out, _ = creator.communicate(timeout=30)
        assert out.startswith("refused:"), out
        assert "already exists" in out
        assert sets_with_key(_naming.rate_key(named)) == [limiter._store.semid]
        limiter.unlink()


def test_half_made_sets_are_finished_or_unlinkable(named: str) -> None:
    key = _naming.rate_key(named)
    # a creator of our size died after semget: the next creator finishes it at once
    assert _libc.create_empty(key, Layout(2, 200_000_000, ()).nsems, 0o600) is not None
    assert _inventory.rate_info(named) is not None  # listed as half-made, so removable
    start = time.monotonic()
    limiter = RateLimiter(5, burst=2, name=named)
    assert time.monotonic() - start < 0.5
    assert limiter.acquire(2, block=False)
    limiter.unlink()
    # a creator with a window quota died after semget: we cannot finish it for them
    quota = Layout(1, 200_000_000, ((100, 60 * 10**9),))
    assert _libc.create_empty(key, quota.nsems, 0o600) is not None
    with pytest.raises(ValueError, match="half-made"):
        RateLimiter(5, name=named)
    info = _inventory.rate_info(named)
    assert info is not None
    assert (info.rates, info.burst, info.rate_text) == ((), 0, "half-made")
    assert _inventory.unlink_any(named)  # what `procthrottle unlink` calls
    assert sets_with_key(key) == []
    limiter = RateLimiter(5, name=named)
    assert limiter.acquire(block=False)
    limiter.unlink()


def test_a_killed_creator_at_any_step_leaves_a_usable_name(named: str) -> None:
    """SIGKILL a creator at each system call of its creation; the name always works after."""
    code = """
        import os, signal, sys
        from procthrottle import RateLimiter
        from procthrottle._kernel import _libc
        calls = {"n": 0}
        real_semget, real_semop = _libc._semget, _libc._semop
        def count(real):
            def call(*args):
                result = real(*args)
                calls["n"] += 1
                if calls["n"] == int(sys.argv[2]):
                    os.kill(os.getpid(), signal.SIGKILL)
                return result
            return call
        _libc._semget, _libc._semop = count(real_semget), count(real_semop)
        RateLimiter(3, burst=3, name=sys.argv[1])
    """
    for step in range(1, 7):
        subprocess.run(
            [PYTHON, "-c", textwrap.dedent(code), named, str(step)],
            env=python_env(),
            timeout=60,
            check=False,
        )
        start = time.monotonic()
        limiter = RateLimiter(3, burst=3, name=named)
        assert time.monotonic() - start < 1.0
        assert limiter.acquire(3, block=False), step
        limiter.unlink()
        assert sets_with_key(_naming.rate_key(named)) == []


# -- another user --------------------------------------------------------------------------------
def test_squatted_key_is_a_clear_permission_error(other_user: int, named: str) -> None:
    key, hi_lo = _naming.rate_key(named), _store.name_tag(named)
    values = _store.initial(hi_lo, Layout(100, 1, ()))  # a huge burst, a tiny interval: the squat
    as_user(
        other_user,
        f"""
        from procthrottle._kernel import _libc
        _libc.create({key}, {values!r}, 0o666)
    """,
    )
    before = sysv_sets()
    try:
        for mode in (0o600, 0o660):
            with pytest.raises(PermissionError, match=r"rate limiter .* owned by another user"):
                RateLimiter(10, name=named, mode=mode)
        assert not made_since(before)  # no private second set either
    finally:
        semids = sets_with_key(key)
        for semid in semids:
            _libc.remove(semid)
    assert len(semids) == 1


def test_sharing_with_another_user_is_opt_in(other_user: int, named: str) -> None:
    as_user(
        other_user,
        f"""
        from procthrottle import RateLimiter
        RateLimiter(1, per=60, name={named!r}, mode=0o666)  # left on the host
    """,
    )
    semids = sets_with_key(_naming.rate_key(named))
    try:
        assert len(semids) == 1
        with pytest.raises(PermissionError, match="another user"):
            RateLimiter(1, per=60, name=named)  # owner-only by default
        shared = RateLimiter(1, per=60, name=named, mode=0o666)
        assert shared._store.semid == semids[0]
        assert shared.acquire(block=False)
        shared.close()
    finally:
        for semid in semids:
            _libc.remove(semid)


def test_mode_is_the_new_sets_mode_and_is_checked(named: str) -> None:
    import sysv_ipc

    limiter = RateLimiter(10, name=named, mode=0o660)
    assert sysv_ipc.Semaphore(limiter._store.key).mode & 0o777 == 0o660
    copy = pickle.loads(pickle.dumps(limiter))
    assert copy._store.semid == limiter._store.semid
    copy.close()
    limiter.unlink()
    for bad, error in ((0o400, ValueError), (0o1600, ValueError), (True, TypeError)):
        with pytest.raises(error, match="mode"):
            RateLimiter(10, name=named, mode=bad)
    assert _store.find_named(named) is None


# -- one name, one kind --------------------------------------------------------------------------
@pytest.mark.parametrize("crash_safe", [True, False], ids=["crash_safe", "posix"])
def test_kinds_conflict_both_ways(crash_safe: bool, named: str) -> None:
    limiter = RateLimiter(10, name=named)
    before = sysv_sets()
    with pytest.raises(NameConflictError, match="is the name of a rate limiter"):
        ProcessSemaphore(1, name=named, crash_safe=crash_safe)
    with pytest.raises(FileNotFoundError):
        ProcessSemaphore.open(named, crash_safe=crash_safe)
    assert not made_since(before)  # nothing made, nothing left
    assert _naming.kind_holding(named, exclude=_naming.RATE_LIMITER) is None
    assert limiter.acquire(block=False)  # untouched
    limiter.unlink()

    sem = ProcessSemaphore(1, name=named, crash_safe=crash_safe)
    before = sysv_sets()
    with pytest.raises(NameConflictError, match="is the name of a crash"):
        RateLimiter(10, name=named)
    assert not made_since(before)
    assert sem.acquire(block=False)
    sem.release()
    sem.unlink()


KIND_RACE = """
    import multiprocessing as mp, os, sys, time
    from procthrottle import ProcessSemaphore, RateLimiter
    from procthrottle._kernel import _naming

    real = _naming.refuse_other_kind
    def check_then_wait(*args):  # both pass the check before either has made its object
        real(*args)
        time.sleep(0.2)

    def make(kind, name, barrier, out):
        _naming.refuse_other_kind = check_then_wait
        barrier.wait()
        try:
            if kind == "rate":
                RateLimiter(10, name=name)
            else:
                ProcessSemaphore(1, name=name, crash_safe=(kind == "sysv"))
        except ValueError as exc:
            out.put((kind, type(exc).__name__))
        else:
            out.put((kind, "made"))

    if __name__ == "__main__":
        from procthrottle._kernel import _inventory
        from procthrottle._rate import _store
        ctx = mp.get_context("fork")
        for round_ in range(int(sys.argv[1])):
            name = f"pt-krace-{os.getpid()}-{round_}"
            other = ("sysv", "posix")[round_ % 2]
            barrier, out = ctx.Barrier(2), ctx.Queue()
            procs = [ctx.Process(target=make, args=(k, name, barrier, out))
                     for k in ("rate", other)]
            for p in procs:
                p.start()
            results = dict(out.get(timeout=30) for _ in procs)
            for p in procs:
                p.join(30)
            made = [k for k, v in results.items() if v == "made"]
            assert len(made) <= 1, results  # never both kinds under one name
            assert all(v in ("made", "NameConflictError") for v in results.values()), results
            exists = {
                "rate": _store.find_named(name) is not None,
                "sysv": _naming.find_named(name, True) is not None,
                "posix": _naming.find_named(name, False) is not None,
            }
            assert [k for k, v in exists.items() if v] == made, (results, exists)
            _inventory.unlink_any(name)
        print("ok")
"""


def test_racing_creators_of_two_kinds_never_both_win() -> None:
    code = KIND_RACE.replace("sys.argv[1]", "8")
    assert run_child(code, timeout=120).stdout.strip() == "ok"


# -- the registry, the inventory, unlink ------------------------------------------------------
def test_named_limiters_are_listed_and_unlinked_like_semaphores(named: str) -> None:
    limiter = RateLimiter(10, burst=3, name=named, extra=[(120, 60)])
    info = _inventory.rate_info(named)
    assert info is not None
    assert (info.name, info.rates, info.burst, info.attached) == (named, (10.0, 2.0), 3, 1)
    assert info.rate_text == "10 per 1 s and 120 per 60 s"
    assert info in _inventory.list_rate_limiters()
    assert _inventory.named_info(named) == []  # not a semaphore
    assert not _inventory.unlink_any(named, crash_safe=True)  # only that kernel's semaphore
    assert _inventory.unlink_any(named)
    assert _inventory.rate_info(named) is None
    assert named not in {i.name for i in _inventory.list_rate_limiters()}
    assert not _inventory.unlink_any(named)
    limiter.close()
    from procthrottle._kernel import _registry

    again = RateLimiter(10, name=named)
    assert named in _registry.rate_names()
    again.unlink()  # forgets the name too
    assert named not in _registry.rate_names()


def test_a_limiter_unpickled_after_its_name_was_removed_is_an_error_not_a_new_one() -> None:
    """As for semaphores: a named limiter sent to a process joins the name, and a name
    unlinked meanwhile raises instead of making a second limiter with a rate of its own."""
    named = unique_name("pt-sent-rate")
    limiter = RateLimiter("10/s", name=named)
    sent = pickle.dumps(limiter)
    joined = pickle.loads(sent)
    assert joined.acquire(block=False)
    assert not limiter.acquire(block=False)  # one shared state: the slot was taken
    joined.close()
    limiter.unlink()
    with pytest.raises(SemaphoreClosedError, match="removed from the host"):
        pickle.loads(sent)
    assert _store.find_named(named) is None  # nothing was made
