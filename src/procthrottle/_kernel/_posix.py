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

import contextlib
import hashlib
import os
import secrets
import sys
from _multiprocessing import SemLock, sem_unlink
from itertools import compress, repeat, starmap
from multiprocessing.util import Finalize
from pathlib import Path
from types import MethodType
from typing import Any, NoReturn

from .._exceptions import SemaphoreClosedError
from ._owner import NameConflictError, check_owner
from ._semaphore import ProcessSemaphore, validate
from ._validate import (
    DEFAULT_MODE,
    POSIX_MAX_LIMIT,
    check_acquire,
    check_count,
    check_mode,
)

MAX_LIMIT = POSIX_MAX_LIMIT
_SEMAPHORE = 1  # SemLock kind; created owner-only (0o600) by SemLock itself
_SHM = Path("/dev/shm") if sys.platform.startswith("linux") else None
ANON_PREFIX = "/pt-anon-"
_NO_ARGS = repeat(())
_BLOCK = repeat(True)


def os_names(name: str) -> tuple[str, str, str]:
    """The free, room and limit semaphores of ``name``: hashed (macOS allows 31 bytes)."""
    digest = hashlib.blake2b(name.encode(), digest_size=10, person=b"procthrottle.psx").hexdigest()
    return f"/pt-{digest}", f"/pt-{digest}.r", f"/pt-{digest}.l"


def _path(os_name: str) -> str | None:
    """Where Linux keeps the semaphore ``os_name`` (None where the OS does not say)."""
    return None if _SHM is None else f"/dev/shm/sem.{os_name[1:]}"


def _unlink(os_name: str) -> bool:
    try:
        sem_unlink(os_name)
    except FileNotFoundError:
        return False
    return True


def _check_owner(os_name: str, what: str, mode: int) -> None:
    path = _path(os_name)
    if path is None:  # pragma: no cover - macOS: the OS checks permissions only
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return  # unlinked since we opened it: the handle works, nobody else can get it
    check_owner(
        what,
        uid=info.st_uid,
        cuid=info.st_uid,
        gid=info.st_gid,
        object_mode=info.st_mode,
        mode=mode,
    )


def _create(os_name: str, initial: int, maximum: int, mode: int) -> Any:
    """Create ``os_name``; FileExistsError if it exists."""
    lock = SemLock(_SEMAPHORE, initial, maximum, os_name, False)
    path = _path(os_name)
    if path is not None and mode != 0o600:
        os.chmod(path, mode)  # sem_open made it 0o600 less the umask
    return lock


def _get(os_name: str, initial: int | None, maximum: int, what: str, mode: int) -> Any:
    """Open ``os_name``, creating it with ``initial`` if missing (``initial=None``: only open).

    Returns ``(lock, created)``.
    """
    while True:
        try:
            lock = SemLock._rebuild(0, _SEMAPHORE, maximum, os_name)
        except FileNotFoundError:
            if initial is None:
                raise
            try:
                return _create(os_name, initial, maximum, mode), True
            except FileExistsError:
                continue  # created meanwhile by another opener: open that one
        except PermissionError:
            _check_owner(os_name, what, mode)  # names the owner if it is another user
            raise PermissionError(f"{what}: permission denied ({os_name})") from None
        _check_owner(os_name, what, mode)  # after opening: a later swap cannot fool us
        return lock, False


def exists(name: str) -> bool:
    """Whether any of the name's POSIX semaphores exists (half-made ones too)."""
    for os_name in os_names(name):
        path = _path(os_name)
        if path is not None:
            if os.path.exists(path):
                return True
            continue
        try:  # pragma: no cover - macOS
            SemLock._rebuild(0, _SEMAPHORE, 1, os_name)
        except FileNotFoundError:  # pragma: no cover
            continue
        except OSError:  # pragma: no cover
            pass
        return True  # pragma: no cover
    return False


def open_or_create_named(name: str, limit: int | None, mode: int) -> tuple[Any, Any, int]:
    """``(free, room, limit)`` of the named semaphore; ``limit=None`` only opens."""
    from . import _naming, _registry

    free_name, room_name, limit_name = os_names(name)
    what = f"semaphore {name!r} (crash_safe=False)"
    try:
        limit_lock, created = _get(limit_name, limit, POSIX_MAX_LIMIT, what, mode)
    except FileNotFoundError:
        hint = ""
        if _naming.exists(name):
            hint = "; a crash-safe semaphore has this name: open it with crash_safe=True"
        raise FileNotFoundError(
            f"no crash_safe=False semaphore named {name!r} exists; create it with "
            f"ProcessSemaphore(limit, name={name!r}, crash_safe=False){hint}"
        ) from None
    existing: int = limit_lock._get_value()
    if limit is not None and existing != limit:
        raise ValueError(
            f"semaphore {name!r} (crash_safe=False) already exists with limit={existing}, "
            f"not {limit}; open it with limit={existing} (or ProcessSemaphore.open({name!r}, "
            f"crash_safe=False)), or unlink it first (`procthrottle unlink {name}`)"
        )
    free, _ = _get(free_name, existing, existing, what, mode)
    room, _ = _get(room_name, 0, existing, what, mode)
    if created:
        if _naming.exists(name):  # a crash-safe creator raced us: neither wins
            unlink_named(name)
            raise _naming._other_kernel(name, crash_safe=True)
        _registry.add(name, False)
    return free, room, existing


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


_swept = False


def _sweep_anonymous() -> None:
    """Unlink this user's anonymous semaphores whose creator died (once per process, Linux).

    Their names carry the creator's pid; a creator killed by a signal cannot unlink them, so
    the next process of the same user that makes an anonymous semaphore does.
    """
    global _swept
    if _swept or _SHM is None:
        return
    _swept = True
    me = os.geteuid()
    with contextlib.suppress(OSError):
        for path in _SHM.glob(f"sem.{ANON_PREFIX[1:]}*"):
            pid_text = path.name[len("sem." + ANON_PREFIX[1:]) :].split("-", 1)[0]
            try:
                pid = int(pid_text)
                if path.stat().st_uid != me:
                    continue
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    path.unlink()
            except (ValueError, OSError):
                continue


def find_named(name: str) -> tuple[int, int] | None:
    """``(limit, value)`` of the named semaphore, or None if it does not exist (or half-made)."""
    free_name, _, limit_name = os_names(name)
    try:
        limit: int = SemLock._rebuild(0, _SEMAPHORE, 1, limit_name)._get_value()
        return limit, SemLock._rebuild(0, _SEMAPHORE, limit, free_name)._get_value()
    except (FileNotFoundError, PermissionError):
        return None


def unlink_named(name: str) -> bool:
    """Remove the named semaphore's OS objects (half-made too); False if there were none."""
    from . import _registry

    _registry.discard(name, False)
    free_name, room_name, limit_name = os_names(name)
    removed = [_unlink(os_name) for os_name in (free_name, room_name, limit_name)]  # all three
    return any(removed)


__all__ = ["NameConflictError", "PosixSemaphore", "exists", "find_named", "unlink_named"]
