"""What one process keeps about its crash-safe handles, beside the kernel's own records.

The permit tokens that mirror this process's undo values (so an over-release is refused, and a
forked child starts with none), every open handle (reset after a fork), the attach and detach
of a handle (the last detach removes an anonymous set), and the stand-ins for a closed handle
and for an inherited one that a forked child has not used yet.
"""

from __future__ import annotations

import os
import weakref
from multiprocessing.util import register_after_fork
from typing import TYPE_CHECKING, Any, NoReturn

import sysv_ipc

from .._exceptions import SemaphoreClosedError
from . import _libc
from ._naming import ATTACH, IF_UNUSED

if TYPE_CHECKING:
    from ._sysv import SysVSemaphore

_ATTACH = _libc.ops((ATTACH, 1, _libc.SEM_UNDO))
_DETACH = _libc.ops((ATTACH, -1, _libc.SEM_UNDO | _libc.IPC_NOWAIT))


# Permits this process holds, per set: the kernel's undo values, mirrored. One token per
# permit; list.append and list.pop are atomic, so no lock sits on the hot path, and pop from an
# empty list is exactly the over-release we must refuse.
_held: dict[int, list[None]] = {}
#: Every open handle of this process, attached or not (forked children reset them all).
_handles: weakref.WeakSet[SysVSemaphore] = weakref.WeakSet()


def _tokens(semid: int, *, fresh: bool = False) -> list[None]:
    tokens = _held.get(semid)
    if tokens is None or fresh:
        tokens = _held[semid] = []
    return tokens


def _after_fork_in_child() -> None:
    # Undo values are not inherited: the child holds no permit and has attached to nothing.
    # It attaches to an inherited set only when it first uses it, so that a child killed by a
    # signal never becomes the last user of a set it never touched (nobody would remove it).
    # Every handle is reset, used or not, so a grandchild never sees a child's tokens.
    _held.clear()
    for sem in list(_handles):
        sem._detached_after_fork()


def _after_multiprocessing_bootstrap(_: object) -> None:
    # A multiprocessing child (fork or spawn) clears the finalizer registry after our fork hook
    # ran and after its Process arguments were unpickled; register the detach finalizers again.
    for sem in list(_handles):
        if isinstance(sem._handle, sysv_ipc.Semaphore):
            sem._register_finalizer()


class _Anchor:
    """Keeps the after-fork registration alive (multiprocessing holds it weakly)."""


_anchor = _Anchor()
os.register_at_fork(after_in_child=_after_fork_in_child)
register_after_fork(_anchor, _after_multiprocessing_bootstrap)


def _detach(semid: int, anonymous: bool) -> None:
    """Undo this handle's attach; the last handle on the host removes an anonymous set."""
    try:
        _libc.semop(semid, _DETACH)
        if anonymous and _libc.semop(semid, IF_UNUSED):
            _libc.remove(semid)
            _held.pop(semid, None)
    except OSError as exc:
        if exc.errno not in _libc.GONE:  # pragma: no cover - unexpected kernel error
            raise


class _Closed:
    """Stands in for the kernel handle after close(): every use raises."""

    def __init__(self, message: str) -> None:
        self.message = message

    def _raise(self, *args: object, **kwargs: object) -> NoReturn:
        raise SemaphoreClosedError(self.message)

    acquire = release = _raise

    @property
    def value(self) -> NoReturn:
        self._raise()


class _AttachOnUse:
    """Stands in for the kernel handle in a forked child until the child first uses it."""

    def __init__(self, sem: SysVSemaphore, handle: Any) -> None:
        self.sem, self.handle = sem, handle

    def attach(self) -> Any:
        self.sem._handle = self.handle
        self.sem._attach()
        return self.handle

    def acquire(self) -> NoReturn:
        raise AssertionError("attach first")  # pragma: no cover - acquire() attaches first

    def release(self, delta: int = 1) -> None:
        self.attach().release(delta)

    @property
    def value(self) -> int:
        value: int = self.attach().value
        return value


