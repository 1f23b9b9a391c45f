"""Every float timeout works and never damages a handle; errors say what they are; inventory."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import time

import pytest

from helpers import unique_name
from kernel_attack import KINDS
from procthrottle import AsyncSemaphore, ProcessSemaphore, SemaphoreClosedError
from procthrottle._kernel import _inventory, _libc, _naming
from procthrottle._kernel._semaphore import _HoldsPermits

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")


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
        ({"block": False, "timeout": float("nan")}, ValueError),
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


@pytest.mark.parametrize("crash_safe", KINDS)
def test_a_timeout_without_block_is_ignored_as_by_multiprocessing(crash_safe: bool) -> None:
    """`multiprocessing.Semaphore.acquire(False, 5)` takes a free permit or returns False at
    once (threading would raise): the contract is multiprocessing's."""
    sem = ProcessSemaphore(1, crash_safe=crash_safe)
    reference = multiprocessing.Semaphore(1)
    for s in (sem, reference):
        assert s.acquire(False, 5)
        start = time.monotonic()
        assert not s.acquire(block=False, timeout=5)
        assert time.monotonic() - start < 1
        s.release()
    assert sem.value == 1
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


@pytest.mark.parametrize("limit", [40000, 2**31])
def test_limit_errors_suggest_only_what_helps(limit: int) -> None:
    """Both kernels stop at SEMVMX: the other kernel is no way out, so it is not suggested."""
    for crash_safe in (True, False):
        with pytest.raises(ValueError, match="limit must be <= 32767") as info:
            ProcessSemaphore(limit, crash_safe=crash_safe)
        assert "crash_safe" not in str(info.value)


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
