"""How many threads of any process wait in a kernel semaphore, where the kernel can tell.

`Core` hands a released permit straight to the next local task only when nobody waits in the
kernel; for both kernels (one System V set each) that is ``semctl(GETNCNT)`` on the permit
semaphore (number 0 of the set, the one the ``sysv_ipc`` handle works on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _sysv_blocked(sem: Any) -> int:
    """Threads blocked for a permit of a System V semaphore (either kernel): GETNCNT, one
    ``semctl``, cheaper than the release and acquire a hand-over saves. -1 if unknown."""
    handle: Any = getattr(sem, "_handle", None)
    if handle.__class__ is not _SysVHandle:  # closed, or not yet attached after a fork
        return -1
    try:
        return int(handle.waiting_for_nonzero)
    except Exception:
        return -1


def kernel_waiters_counter(sem: Any) -> Callable[[Any], int] | None:
    """A function counting the threads blocked in ``sem``'s kernel, or None."""
    counter = getattr(sem, "_blocked_waiters", None)  # a kernel that says it itself
    if callable(counter):
        return lambda s: int(s._blocked_waiters())
    if _SysVHandle is not None and hasattr(sem, "_handle") and hasattr(sem, "_semid"):
        return _sysv_blocked
    return None


try:  # the crash-safe kernel's handle type (not on Windows)
    import sysv_ipc

    _SysVHandle: Any = sysv_ipc.Semaphore
except ImportError:  # pragma: no cover
    _SysVHandle = None
