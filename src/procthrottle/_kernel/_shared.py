"""The ``crash_safe=False`` kernel: the crash-safe kernel's System V set, permits without undo.

The set is the one ``_naming`` makes for every named or anonymous semaphore, with a sixth
semaphore, ``ROOM`` (``limit`` minus the free permits). Naming, ownership, attach counting,
the removal of anonymous sets and forking are the crash-safe kernel's (this class derives from
it); only the permits differ:

* ``acquire`` is one ``semop``: take a permit *and* add one to ``ROOM``;
* ``release(n)`` is one ``semop``: take ``n`` from ``ROOM`` without waiting *and* add ``n``
  permits. If ``ROOM`` has fewer than ``n`` the kernel refuses the whole operation, so no race
  of releases, in any number of processes, can push the value above the limit.

Neither uses ``SEM_UNDO``: the kernel does not tie a permit to the process that took it, so any
process may release it, and the permits of a process that dies holding them are lost. Each
operation is a single system call, so a signal handler that raises, or a ``close()`` on another
thread, finds every permit either taken (and releasable by anyone) or free: never half-moved.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import ClassVar, NoReturn

import sysv_ipc

from .._exceptions import SemaphoreClosedError
from . import _libc
from ._handles import _AttachOnUse, _Closed
from ._naming import PERMITS, ROOM
from ._sysv import SysVSemaphore
from ._validate import check_acquire, check_count

_SysVHandle = sysv_ipc.Semaphore
_semop = _libc._semop  # looked up at call time: tests widen the window around it
_get_errno = ctypes.get_errno
_TWO = ctypes.c_size_t(2)
_TAKE = _libc.ops((PERMITS, -1, _libc.IPC_NOWAIT), (ROOM, 1, 0))
_TAKE_WAIT = _libc.ops((PERMITS, -1, 0), (ROOM, 1, 0))
_GIVE = _libc.ops((ROOM, -1, _libc.IPC_NOWAIT), (PERMITS, 1, 0))
# Addresses made once: ctypes passes them without converting the arrays on every call.
_TAKE_P = ctypes.c_void_p(ctypes.addressof(_TAKE))
_GIVE_P = ctypes.c_void_p(ctypes.addressof(_GIVE))


def _give_ops(n: int) -> ctypes.Array[_libc.SemBuf]:
    return _libc.ops((ROOM, -n, _libc.IPC_NOWAIT), (PERMITS, n, 0))


class SharedSemaphore(SysVSemaphore):
    """``ProcessSemaphore(crash_safe=False)`` on Linux and macOS."""

    __slots__ = ("_cid",)

    _CRASH_SAFE: ClassVar[bool] = False
    _cid: ctypes.c_int

    def _setup(
        self, key: int, semid: int, limit: int, name: str | None, mode: int, *, created: bool
    ) -> None:
        self._cid = ctypes.c_int(semid)
        super()._setup(key, semid, limit, name, mode, created=created)

    def _usable(self) -> None:
        """Attach a forked child's inherited handle; raise if the handle is closed."""
        handle = self._handle
        if handle.__class__ is _AttachOnUse:
            handle.attach()
        elif handle.__class__ is _Closed:
            handle.acquire()  # raises SemaphoreClosedError

    # -- hot path -------------------------------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None:
            timeout = check_acquire(block, timeout)
        if self._handle.__class__ is not _SysVHandle:
            self._usable()
        if _semop(self._cid, _TAKE_P, _TWO) == 0:
            return True
        code = _get_errno()
        if code == errno.EAGAIN:
            if not block or (timeout is not None and timeout <= 0):
                return False
            return self._wait(timeout)
        if code == errno.EINTR:  # pragma: no cover - a non-blocking semop is not interrupted
            return self.acquire(block, timeout)
        self._fail(code)

    def _wait(self, timeout: float | None) -> bool:
        """Block in the kernel until a permit comes (True) or the timeout passes (False).

        A signal handler that raises after the kernel gave the permit leaves it taken (the
        ``ROOM`` of the same operation counts it), so whoever catches the exception can still
        release it: nothing is half-done.
        """
        try:
            if not _libc.wait(self._semid, _TAKE_WAIT, timeout):
                return False
        except OSError as exc:
            if exc.errno in _libc.GONE:
                self._gone(exc)
            raise
        handle = self._handle
        if handle.__class__ is _Closed:  # closed by another thread while we waited
            self._give_back()
            raise SemaphoreClosedError(handle.message)
        return True

    def _give_back(self) -> None:
        try:
            _libc.semop(self._semid, _GIVE)
        except OSError as exc:  # pragma: no cover - removed meanwhile: nothing to give back
            if exc.errno not in _libc.GONE:
                raise

    def release(self, n: int = 1) -> None:
        if n.__class__ is not int or n < 1:
            check_count(n)
        if self._handle.__class__ is not _SysVHandle:
            self._usable()
        if n == 1:
            if _semop(self._cid, _GIVE_P, _TWO) == 0:
                return
        elif n > self._limit:  # can never fit (and would not fit a semop's short either)
            self._refuse(n)
        else:
            operations = _give_ops(n)
            if _semop(self._cid, operations, _TWO) == 0:
                return
        code = _get_errno()
        if code == errno.EAGAIN:
            self._refuse(n)
        if code == errno.EINTR:  # pragma: no cover - a non-blocking semop is not interrupted
            self.release(n)
            return
        self._fail(code)

    def _refuse(self, n: int) -> NoReturn:
        raise ValueError(
            f"release(n={n}) would raise the value above limit={self._limit} "
            f"(value is {self.value}); release only permits that were acquired"
        )

    def _fail(self, code: int) -> NoReturn:
        error = OSError(code, os.strerror(code))
        if code in _libc.GONE:
            self._gone(error)
        raise error

    @property
    def crash_safe(self) -> bool:
        return False


__all__ = ["SharedSemaphore"]
