"""ProcessSemaphore in one process: semantics, bad input, lifetime, permissions."""

from __future__ import annotations

import pickle
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import sysv_ipc

import procthrottle
from helpers import PYTHON, python_env, unique_name
from procthrottle import ProcessSemaphore, SemaphoreClosedError
from procthrottle._kernel import _naming, _shared, _sysv
from procthrottle._kernel._fallback import FallbackSemaphore

KINDS = [pytest.param(True, id="crash_safe"), pytest.param(False, id="posix")]


@pytest.fixture(params=KINDS)
def crash_safe(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def named(crash_safe: bool) -> Iterator[ProcessSemaphore]:
    sem = ProcessSemaphore(2, name=unique_name(), crash_safe=crash_safe)
    yield sem
    sem.unlink()


def test_public_names() -> None:
    assert sorted(procthrottle.__all__) == sorted(
        [
            "AsyncRateLimiter",
            "AsyncSemaphore",
            "ProcThrottleError",
            "ProcessSemaphore",
            "RateLimiter",
            "SemaphoreClosedError",
            "ThrottledExecutor",
            "ThrottledProcessPool",
            "WorkerCrashedError",
            "critical_section",
            "throttle",
        ]
    )
    for name in procthrottle.__all__:
        assert getattr(procthrottle, name).__module__.startswith("procthrottle")
    assert issubclass(procthrottle.SemaphoreClosedError, procthrottle.ProcThrottleError)
    assert issubclass(procthrottle.WorkerCrashedError, procthrottle.ProcThrottleError)


def test_acquire_release_value(crash_safe: bool) -> None:
    sem = ProcessSemaphore(3, crash_safe=crash_safe)
    assert isinstance(sem, ProcessSemaphore)
    assert (sem.limit, sem.name, sem.value, sem.crash_safe) == (3, None, 3, crash_safe)
    assert sem.acquire() is True
    assert sem.acquire(block=False) is True
    assert sem.acquire(True, 0.5) is True
    assert sem.value == 0
    assert sem.acquire(block=False) is False
    assert sem.acquire(timeout=-1) is False
    assert sem.acquire(timeout=0) is False
    sem.release(2)
    assert sem.value == 2
    sem.release()
    assert sem.value == 3
    sem.close()


def test_timeout_elapses_within_bounds(crash_safe: bool) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    assert sem.acquire()
    start = time.monotonic()
    assert sem.acquire(timeout=0.3) is False
    elapsed = time.monotonic() - start
    assert 0.28 <= elapsed < 2.0
    sem.release()
    assert sem.value == 1


def test_timed_wait_is_woken_by_a_release(crash_safe: bool) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    assert sem.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(sem.acquire(timeout=10)))
    waiter.start()
    time.sleep(0.05)
    sem.release()
    waiter.join(5)
    assert got == [True]
    assert sem.value == 0
    sem.release()
    assert sem.value == 1


def test_over_release_raises_and_keeps_count(crash_safe: bool) -> None:
    sem = ProcessSemaphore(2, crash_safe=crash_safe)
    with pytest.raises(ValueError, match="limit=2"):
        sem.release()
    assert sem.value == 2
    assert sem.acquire()
    with pytest.raises(ValueError, match="release"):
        sem.release(2)
    assert sem.value == 1
    sem.release()
    assert sem.value == 2


def test_context_manager(crash_safe: bool) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    with sem as entered:
        assert entered is sem
        assert sem.value == 0
    assert sem.value == 1
    with pytest.raises(RuntimeError), sem:
        raise RuntimeError
    assert sem.value == 1


def test_release_from_another_thread(crash_safe: bool) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    assert sem.acquire()
    t = threading.Thread(target=sem.release)
    t.start()
    t.join()
    assert sem.value == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": -3}, ValueError, "limit"),
        ({"limit": True}, TypeError, "limit"),
        ({"limit": 1.5}, TypeError, "limit"),
        ({"limit": "2"}, TypeError, "limit"),
        ({"limit": None}, TypeError, "limit"),
        ({"limit": 1, "name": ""}, ValueError, "name"),
        ({"limit": 1, "name": "a/b"}, ValueError, "name"),
        ({"limit": 1, "name": "x y"}, ValueError, "name"),
        ({"limit": 1, "name": "é"}, ValueError, "name"),
        ({"limit": 1, "name": "a" * 201}, ValueError, "name"),
        ({"limit": 1, "name": 5}, TypeError, "name"),
        ({"limit": 1, "name": b"abc"}, TypeError, "name"),
        ({"limit": 1, "crash_safe": 1}, TypeError, "crash_safe"),
        ({"limit": 1, "crash_safe": None}, TypeError, "crash_safe"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ProcessSemaphore(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("crash_safe", [True, False])
def test_limit_above_semvmx_is_refused(crash_safe: bool) -> None:
    """Both kernels keep permits in a System V semaphore: SEMVMX (32767) is the largest."""
    with pytest.raises(ValueError, match="32767"):
        ProcessSemaphore(32768, crash_safe=crash_safe)
    sem = ProcessSemaphore(32767, crash_safe=crash_safe)
    assert sem.value == 32767
    sem.close()


def test_name_of_200_characters_is_accepted() -> None:
    name = unique_name().ljust(200, "x")
    sem = ProcessSemaphore(1, name=name)
    assert sem.name == name
    sem.unlink()


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda s: s.acquire(timeout="1"), TypeError),
        (lambda s: s.release(0), ValueError),
        (lambda s: s.release(-1), ValueError),
        (lambda s: s.release(1.0), TypeError),
        (lambda s: s.release(True), TypeError),
    ],
)
def test_bad_call_arguments_keep_count(call: object, exc: type, crash_safe: bool) -> None:
    sem = ProcessSemaphore(2, crash_safe=crash_safe)
    assert sem.acquire()
    with pytest.raises(exc):
        call(sem)  # type: ignore[operator]
    assert sem.value == 1
    sem.release()
    assert sem.value == 2


def test_named_is_shared_and_checks_limit(named: ProcessSemaphore, crash_safe: bool) -> None:
    assert named.name is not None
    other = ProcessSemaphore(2, name=named.name, crash_safe=crash_safe)
    assert named.acquire()
    assert other.value == 1
    assert other.acquire()
    assert named.acquire(block=False) is False
    with pytest.raises(ValueError, match="already exists with limit=2"):
        ProcessSemaphore(3, name=named.name, crash_safe=crash_safe)
    assert named.value == 0  # the refused open changed nothing
    other.release()
    named.release()
    assert named.value == 2
    other.close()


def test_names_are_independent(crash_safe: bool) -> None:
    a = ProcessSemaphore(1, name=unique_name(), crash_safe=crash_safe)
    b = ProcessSemaphore(1, name=unique_name(), crash_safe=crash_safe)
    assert a.acquire()
    assert b.acquire(block=False)
    a.release()
    b.release()
    a.unlink()
    b.unlink()


def test_named_objects_are_owner_only(named: ProcessSemaphore, crash_safe: bool) -> None:
    assert named.name is not None
    found = _sysv.find_named(named.name, crash_safe)
    assert found is not None
    assert sysv_ipc.Semaphore(found[0]).mode & 0o777 == 0o600


def test_anonymous_objects_are_owner_only() -> None:
    sem = ProcessSemaphore(1)
    assert isinstance(sem, _sysv.SysVSemaphore)
    assert sysv_ipc.Semaphore(sem._key).mode & 0o777 == 0o600
    sem.close()


def test_unlink_removes_named_and_other_handles_raise(named: ProcessSemaphore) -> None:
    assert named.name is not None
    other = ProcessSemaphore(2, name=named.name, crash_safe=named.crash_safe)
    named.unlink()
    assert _sysv.find_named(named.name) is None
    with pytest.raises(SemaphoreClosedError, match="unlinked"):  # both kernels
        other.acquire()
    other.close()
    with pytest.raises(SemaphoreClosedError):
        named.acquire()
    # the name is free again: a new semaphore may take another limit
    fresh = ProcessSemaphore(5, name=named.name, crash_safe=named.crash_safe)
    assert fresh.value == 5
    fresh.unlink()


def test_closed_semaphore_raises(crash_safe: bool) -> None:
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    sem.close()
    sem.close()  # idempotent
    for use in (sem.acquire, sem.release, lambda: sem.value, lambda: pickle.dumps(sem)):
        with pytest.raises(SemaphoreClosedError):
            use()
    assert "closed" in repr(sem)


def test_pickle_round_trip_shares_permits(crash_safe: bool) -> None:
    sem = ProcessSemaphore(2, crash_safe=crash_safe)
    copy = pickle.loads(pickle.dumps(sem))
    assert copy.limit == 2
    assert sem.acquire()
    assert copy.value == 1
    sem.release()
    copy.close()
    sem.close()


def test_anonymous_set_is_removed_with_last_handle() -> None:
    sem = ProcessSemaphore(1)
    assert isinstance(sem, _sysv.SysVSemaphore)
    copy = pickle.loads(pickle.dumps(sem))
    assert sem.attached == 2
    key = sem._key
    sem.close()
    assert copy.attached == 1
    copy.close()
    with pytest.raises(sysv_ipc.ExistentialError):
        sysv_ipc.Semaphore(key)
    with pytest.raises(SemaphoreClosedError, match="no longer exists"):
        _sysv.SysVSemaphore._open_anonymous(key, 1)


def test_garbage_collected_handle_detaches() -> None:
    sem = ProcessSemaphore(1)
    assert isinstance(sem, _sysv.SysVSemaphore)
    copy = pickle.loads(pickle.dumps(sem))
    assert sem.attached == 2
    del copy
    assert sem.attached == 1
    sem.close()


def test_crash_safe_false_anonymous_set_removed_on_close() -> None:
    sem = ProcessSemaphore(1, crash_safe=False)
    assert isinstance(sem, _shared.SharedSemaphore)
    semid = sem._semid
    assert _naming.size(semid) == _naming.NSEMS_SHARED
    sem.close()
    with pytest.raises(OSError):
        _naming.size(semid)


def test_nan_timeout_is_refused() -> None:
    sem = ProcessSemaphore(1)
    with pytest.raises(ValueError, match="NaN"):
        sem.acquire(timeout=float("nan"))
    assert sem.value == 1
    sem.close()


def test_repr_names_the_semaphore() -> None:
    sem = ProcessSemaphore(2, crash_safe=False)
    assert repr(sem) == "ProcessSemaphore(limit=2, name=None, crash_safe=False, value=2)"
    sem.close()


def test_fallback_kernel_semantics() -> None:
    """The Windows kernel, exercised where it also works (it is plain multiprocessing)."""
    sem = FallbackSemaphore(2)
    assert isinstance(sem, ProcessSemaphore)
    assert sem.acquire()
    assert sem.value == 1
    assert sem.acquire(block=False)
    assert sem.acquire(timeout=0.05) is False
    sem.release(2)
    with pytest.raises(ValueError, match="limit=2"):
        sem.release()
    assert sem.value == 2
    with pytest.raises(NotImplementedError):
        FallbackSemaphore(1, name="x")
    sem.close()
    with pytest.raises(SemaphoreClosedError):
        sem.acquire()


def test_package_imports_where_there_is_no_fork_and_no_system_v() -> None:
    """What Windows looks like to the package: no os.register_at_fork, no sysv_ipc."""
    script = textwrap.dedent(
        """
        import asyncio, concurrent.futures.process, multiprocessing, os, sys  # before the patch
        import anyio
        del os.register_at_fork
        sys.modules["sysv_ipc"] = None
        sys.platform = "win32"
        import procthrottle
        sem = procthrottle.ProcessSemaphore(2)
        assert type(sem).__name__ == "FallbackSemaphore", type(sem)
        assert sem.acquire() and sem.value == 1
        sem.release()
        asem = procthrottle.AsyncSemaphore(sem)
        assert asem.limit == 2
        print("ok")
        """
    )
    out = subprocess.run(
        [PYTHON, "-c", script], env=python_env(), capture_output=True, text=True, timeout=30
    )
    assert out.stdout == "ok\n", out.stderr
