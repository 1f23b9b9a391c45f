"""The fast kernel: POSIX semaphores (futexes in shared memory), not crash-safe.

It is the C ``SemLock`` that ``multiprocessing.Semaphore`` is built on, opened by name so that it
pickles by identity. Uncontended acquire and release never enter the kernel nor release the GIL;
the price is that the kernel does not know who holds a permit, so the permits of a process that
dies holding them are lost, and any process may release.

A semaphore is three POSIX semaphores: ``free`` (the permits), ``room`` (``limit`` minus the free
permits: a release must take one first, so no race of releases can push ``free`` above the
limit) and, for named ones, ``limit`` (its value, which nobody changes). Every opener of a name
creates whichever of them is missing with the values the ``limit`` semaphore dictates, so a
creator that dies half-way leaves a name the next opener completes.
"""

from __future__ import annotations

import os
import secrets
from _multiprocessing import SemLock
from itertools import compress, repeat, starmap
from multiprocessing.util import Finalize
from types import MethodType
from typing import Any, NoReturn

from .._exceptions import SemaphoreClosedError
from ._owner import NameConflictError
from ._posix_names import (
    _SEMAPHORE,
    ANON_PREFIX,
    _check_owner,
    _sweep_anonymous,
    _unlink,
    exists,
    find_named,
    open_or_create_named,
    os_names,
    unlink_named,
)
from ._semaphore import ProcessSemaphore, announce_close, validate
from ._validate import (
    DEFAULT_MODE,
    POSIX_MAX_LIMIT,
    check_acquire,
    check_count,
    check_mode,
)

MAX_LIMIT = POSIX_MAX_LIMIT
_NO_ARGS = repeat(())
_BLOCK = repeat(True)


class _Identity:
    """Pickles as the semaphore it stands for: ``__self__`` of the hot-path methods."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: tuple[Any, ...]) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def _closed(*args: object, **kwargs: object) -> NoReturn:
    raise SemaphoreClosedError("the semaphore was closed in this process")


class PosixSemaphore(ProcessSemaphore):
    """``ProcessSemaphore(crash_safe=False)`` on Linux and macOS."""

    # no __slots__: the instance dict holds the bound C methods of the hot path

    def __init__(
        self,
        limit: int = 1,
        *,
        name: str | None = None,
        crash_safe: bool = False,
        mode: int = DEFAULT_MODE,
    ) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        mode = check_mode(mode)
        if name is None:
            _sweep_anonymous()
            os_name = f"{ANON_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            free = SemLock(_SEMAPHORE, limit, limit, os_name, False)
            try:
                room = SemLock(_SEMAPHORE, 0, limit, os_name + ".r", False)
            except BaseException:
                _unlink(os_name)
                raise
            self._setup(free, room, os_name, limit, None, mode, owned=True)
        else:
            free, room, limit = open_or_create_named(name, limit, mode)
            self._setup(free, room, os_names(name)[0], limit, name, mode, owned=False)

    @classmethod
    def _open_existing(cls, name: str, mode: int = DEFAULT_MODE) -> PosixSemaphore:
        free, room, limit = open_or_create_named(name, None, mode)
        self = object.__new__(cls)
        self._setup(free, room, os_names(name)[0], limit, name, mode, owned=False)
        return self

    def _setup(
        self,
        free: Any,
        room: Any,
        os_name: str,
        limit: int,
        name: str | None,
        mode: int,
        *,
        owned: bool,
    ) -> None:
        self._lock, self._room, self._os_name = free, room, os_name
        self._limit, self._name, self._mode = limit, name, mode
        self._closed = False
        self._free_acquire, self._free_release = free.acquire, free.release
        self._room_acquire, self._room_release = room.acquire, room.release
        self._bind_hot_path()
        # The creator of an anonymous semaphore removes its names when it closes or exits;
        # processes that opened it keep working (POSIX unlink semantics).
        self._finalizer = Finalize(
            self, _unlink_anonymous if owned else _noop, args=(os_name,), exitpriority=10
        )

    @classmethod
    def _open_anonymous(cls, os_name: str, limit: int) -> PosixSemaphore:
        try:
            free = SemLock._rebuild(0, _SEMAPHORE, limit, os_name)
            room = SemLock._rebuild(0, _SEMAPHORE, limit, os_name + ".r")
        except FileNotFoundError:
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: the process that created it closed "
                "it or exited. Keep the creator's ProcessSemaphore alive while others use it, "
                "or give it a name="
            ) from None
        _check_owner(os_name, "this anonymous semaphore", DEFAULT_MODE)
        self = object.__new__(cls)
        self._setup(free, room, os_name, limit, None, DEFAULT_MODE, owned=False)
        return self

    # -- hot path -------------------------------------------------------------------------
    def _bind_hot_path(self) -> None:
        """Bind ``acquire`` and ``release`` as closures over the four C methods they call.

        A closure reads its C methods from cells, without attribute lookups; ``close()``
        rebinds those cells, so even an ``acquire`` fetched before closing raises afterwards.
        """
        free_acquire, room_release = self._free_acquire, self._room_release
        room_acquire, free_release = self._room_acquire, self._free_release
        acquire_slowly, release_slowly = self._acquire_slowly, self._release_slowly
        one = 1

        def acquire(_: object, block: bool = True, timeout: float | None = None) -> bool:
            if timeout is None and free_acquire(False):
                room_release()
                return True
            return acquire_slowly(block, timeout)

        def release(_: object, n: int = 1) -> None:
            if n is one and room_acquire(False):
                free_release()
                return
            release_slowly(n)

        def close_hot_path() -> None:
            nonlocal free_acquire, room_release, room_acquire, free_release
            free_acquire = room_release = room_acquire = free_release = _closed

        # Bound to a stand-in that pickles as this semaphore (not to self: no reference
        # cycle), so `sem.release` can be sent to another process like any bound method.
        identity = _Identity(self.__reduce__())
        self.acquire = MethodType(acquire, identity)  # type: ignore[method-assign]
        self.release = MethodType(release, identity)  # type: ignore[method-assign]
        self._close_hot_path = close_hot_path

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover - replaced per instance in _setup

    def release(self, n: int = 1) -> None:
        raise NotImplementedError  # pragma: no cover - replaced per instance in _setup

    def _acquire_slowly(self, block: bool, timeout: float | None) -> bool:
        if timeout is not None:
            timeout = check_acquire(block, timeout)
        if self._closed:
            _closed()
        if self._free_acquire(False):
            self._room_release()
            return True
        if not block or (timeout is not None and timeout <= 0):
            return False
        return self._wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        """Block until a permit comes (True) or the timeout passes (False).

        The wait and the matching ``room`` post run in one chain of C calls (``extend`` pulls
        from ``starmap`` from ``compress`` from ``map``): no signal handler runs between them,
        so an exception raised by one never strands the permit.
        """
        room_release = self._room_release
        got: list[None] = []
        got.extend(
            starmap(room_release, compress(_NO_ARGS, map(self._free_acquire, _BLOCK, (timeout,))))
        )
        if not got:
            return False
        if self._closed:  # closed by another thread while we waited: give the permit back
            self._room.acquire(False)
            self._lock.release()
            _closed()
        return True

    def _release_slowly(self, n: int) -> None:
        if self._closed:
            _closed()
        if n.__class__ is not int or n != 1:
            check_count(n)
        room_acquire, room_release, free_release = (
            self._room_acquire,
            self._room_release,
            self._free_release,
        )
        taken = 0
        while taken < n:
            if not room_acquire(False):
                for _ in range(taken):
                    room_release()
                self._refuse(n)
            taken += 1
        for _ in range(n):
            free_release()

    def _refuse(self, n: int) -> NoReturn:
        raise ValueError(
            f"release(n={n}) would raise the value above limit={self._limit} "
            f"(value is {self.value}); release only permits that were acquired"
        )

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def crash_safe(self) -> bool:
        return False

    @property
    def value(self) -> int:
        if self._closed:
            _closed()
        value: int = self._lock._get_value()
        return value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._free_acquire = self._free_release = _closed
            self._room_acquire = self._room_release = _closed
            self._close_hot_path()
            self._finalizer()
            announce_close(self)

    def unlink(self) -> None:
        if self._name is not None:
            unlink_named(self._name)
        else:
            _unlink_anonymous(self._os_name)
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        if self._name is not None:
            return (_open_named, (self._name, self._limit, self._mode))
        return (PosixSemaphore._open_anonymous, (self._os_name, self._limit))


def _noop(os_name: str) -> None:
    pass


def _unlink_anonymous(os_name: str) -> None:
    _unlink(os_name)
    _unlink(os_name + ".r")


def _open_named(name: str, limit: int, mode: int = DEFAULT_MODE) -> ProcessSemaphore:
    return ProcessSemaphore(limit, name=name, crash_safe=False, mode=mode)


__all__ = [
    "NameConflictError",
    "PosixSemaphore",
    "exists",
    "find_named",
    "open_or_create_named",
    "os_names",
    "unlink_named",
]
