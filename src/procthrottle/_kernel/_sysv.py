"""The crash-safe kernel: a System V semaphore set adjusted with ``SEM_UNDO``.

A set holds five semaphores: the free permits, an attach counter, the limit, and a 30-bit
tag naming its owner (0 for anonymous sets). Every change a process makes to the permits and
to the attach counter is recorded by the kernel as an undo value, which it applies when the
process exits, whatever the cause. So a SIGKILLed holder's permits come back, and the attach
counter always counts the processes that still use the set; the last process to detach from an
anonymous set removes it. docs/design.md explains why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import time
import weakref
from multiprocessing.util import Finalize, register_after_fork
from typing import Any, NoReturn

import sysv_ipc

from .._exceptions import SemaphoreClosedError
from . import _libc
from ._semaphore import ProcessSemaphore, validate
from ._validate import MAX_LIMIT, check_count, check_timeout

PERMITS, ATTACH, LIMIT, TAG_HI, TAG_LO = range(5)
ANONYMOUS_TAG = (0, 0)
#: How many keys a name may hash to before we give up (collisions with other sets).
PROBES = 8
#: How long to wait for another process to finish initialising a set it just created.
INIT_TIMEOUT = 2.0

_ACQUIRE = _libc.ops((PERMITS, -1, _libc.SEM_UNDO))
_ATTACH = _libc.ops((ATTACH, 1, _libc.SEM_UNDO))
_DETACH = _libc.ops((ATTACH, -1, _libc.SEM_UNDO | _libc.IPC_NOWAIT))
_IF_UNUSED = _libc.ops((ATTACH, 0, _libc.IPC_NOWAIT))


# Permits this process holds, per set: the kernel's undo values, mirrored. One token per
# permit; list.append and list.pop are atomic, so no lock sits on the hot path, and pop from an
# empty list is exactly the over-release we must refuse.
_held: dict[int, list[None]] = {}
_live: weakref.WeakSet[SysVSemaphore] = weakref.WeakSet()


def _tokens(semid: int, *, fresh: bool = False) -> list[None]:
    tokens = _held.get(semid)
    if tokens is None or fresh:
        tokens = _held[semid] = []
    return tokens


def _after_fork_in_child() -> None:
    # Undo values are not inherited: the child holds no permit and has attached to nothing.
    # It attaches to an inherited set only when it first uses it, so that a child killed by a
    # signal never becomes the last user of a set it never touched (nobody would remove it).
    _held.clear()
    live = list(_live)
    _live.clear()
    for sem in live:
        sem._detached_after_fork()


def _after_multiprocessing_bootstrap(_: object) -> None:
    # A multiprocessing child (fork or spawn) clears the finalizer registry after our fork hook
    # ran and after its Process arguments were unpickled; register the detach finalizers again.
    for sem in list(_live):
        sem._register_finalizer()


class _Anchor:
    """Keeps the after-fork registration alive (multiprocessing holds it weakly)."""


_anchor = _Anchor()
os.register_at_fork(after_in_child=_after_fork_in_child)
register_after_fork(_anchor, _after_multiprocessing_bootstrap)


def _tag(name: str) -> tuple[int, int]:
    digest = hashlib.blake2b(name.encode(), digest_size=4, person=b"procthrottle.tag").digest()
    value = int.from_bytes(digest, "big")
    hi, lo = (value >> 15) & 0x7FFF, value & 0x7FFF
    return (hi or 1), lo  # never the anonymous tag


def _key(name: str, probe: int) -> int:
    data = f"{probe}:{name}".encode()
    digest = hashlib.blake2b(data, digest_size=4, person=b"procthrottle.key").digest()
    return (int.from_bytes(digest, "big") & 0x7FFFFFFF) or 1  # 0 is IPC_PRIVATE


def _describe(key: int, semid: int) -> tuple[tuple[int, int], int] | None:
    """(tag, limit) of a procthrottle set; None for a foreign or half-made set."""
    try:
        _libc.getval(semid, TAG_LO)  # EINVAL: fewer than five semaphores, not one of ours
        deadline = time.monotonic() + INIT_TIMEOUT
        while sysv_ipc.Semaphore(key).o_time == 0:  # the creator's first semop marks it ready
            if time.monotonic() > deadline:
                if all(_libc.getval(semid, i) == 0 for i in range(5)):
                    _libc.remove(semid)  # its creator died between semget and set-up
                return None
            time.sleep(0.001)
        tag = (_libc.getval(semid, TAG_HI), _libc.getval(semid, TAG_LO))
        return tag, _libc.getval(semid, LIMIT)
    except (OSError, sysv_ipc.Error):
        return None  # removed meanwhile, not ours, or not readable by us


def _initial(limit: int, tag: tuple[int, int]) -> list[int]:
    return [limit, 0, limit, *tag]


def _create_anonymous(limit: int) -> tuple[int, int]:
    while True:
        key = secrets.randbelow(0x7FFFFFFE) + 1
        semid = _libc.create(key, _initial(limit, ANONYMOUS_TAG))
        if semid is not None:
            return key, semid


def find_named(name: str) -> tuple[int, int, int] | None:
    """``(key, semid, limit)`` of the named set, or None if it does not exist."""
    tag = _tag(name)
    for probe in range(PROBES):
        key = _key(name, probe)
        semid = _lookup(key)
        if semid is None:
            continue
        found = _describe(key, semid)
        if found is not None and found[0] == tag:
            return key, semid, found[1]
    return None


def _lookup(key: int) -> int | None:
    try:
        return _libc.lookup(key)
    except PermissionError:
        return None  # another user's set: never ours


def _open_or_create_named(name: str, limit: int) -> tuple[int, int, bool]:
    """``(key, semid, created)``; a set found under another limit raises ValueError."""
    for _ in range(3):  # a concurrent creator may win the key we chose
        found = find_named(name)
        if found is not None:
            key, semid, existing = found
            if existing != limit:
                raise ValueError(
                    f"semaphore {name!r} already exists with limit={existing}, not {limit}; "
                    f"open it with limit={existing}, or unlink it first "
                    f"(`procthrottle unlink {name}`)"
                )
            return key, semid, False
        for probe in range(PROBES):
            key = _key(name, probe)
            if _lookup(key) is not None:
                continue
            new = _libc.create(key, _initial(limit, _tag(name)))
            if new is not None:
                return key, new, True
            break  # taken meanwhile: look again, it may be our name
    raise OSError(
        errno.ENOSPC, f"no free System V key for semaphore {name!r} after {PROBES} probes"
    )


def _detach(semid: int, anonymous: bool) -> None:
    """Undo this handle's attach; the last handle on the host removes an anonymous set."""
    try:
        _libc.semop(semid, _DETACH)
        if anonymous and _libc.semop(semid, _IF_UNUSED):
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

    def _attached(self) -> Any:
        self.sem._handle = self.handle
        self.sem._attach()
        return self.handle

    def acquire(self) -> None:
        self._attached().acquire()

    def release(self, delta: int = 1) -> None:
        self._attached().release(delta=delta)

    @property
    def value(self) -> int:
        value: int = self._attached().value
        return value


class SysVSemaphore(ProcessSemaphore):
    """``ProcessSemaphore(crash_safe=True)`` on Linux and macOS."""

    __slots__ = ("_finalizer", "_handle", "_held", "_key", "_limit", "_name", "_semid")

    _handle: Any  # sysv_ipc.Semaphore with block=False, undo=True; _AttachOnUse; or _Closed
    _finalizer: Finalize | None

    def __init__(self, limit: int = 1, *, name: str | None = None, crash_safe: bool = True) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        if name is None:
            key, semid = _create_anonymous(limit)
            created = True
        else:
            key, semid, created = _open_or_create_named(name, limit)
        self._setup(key, semid, limit, name, created=created)

    @classmethod
    def _open_anonymous(cls, key: int, limit: int) -> SysVSemaphore:
        semid = _lookup(key)
        found = None if semid is None else _describe(key, semid)
        if semid is None or found != (ANONYMOUS_TAG, limit):
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: every process that used it closed "
                "it or exited. Keep the creating process's ProcessSemaphore alive while others "
                "use it, or give it a name="
            )
        self = object.__new__(cls)
        self._setup(key, semid, limit, None, created=False)
        return self

    def _setup(self, key: int, semid: int, limit: int, name: str | None, *, created: bool) -> None:
        self._key, self._semid, self._limit, self._name = key, semid, limit, name
        self._held = _tokens(semid, fresh=created)
        handle = sysv_ipc.Semaphore(key)
        handle.block, handle.undo = False, True
        self._handle = handle
        self._attach()

    def _attach(self) -> None:
        try:
            _libc.semop(self._semid, _ATTACH)  # also marks a new set as ready (sem_otime)
        except OSError as exc:
            self._handle = _Closed(self._gone_message())
            raise SemaphoreClosedError(self._gone_message()) from exc
        _live.add(self)
        self._register_finalizer()

    def _register_finalizer(self) -> None:
        """Detach when this handle is closed, collected, or its process exits normally."""
        self._finalizer = Finalize(
            self, _detach, args=(self._semid, self._name is None), exitpriority=10
        )

    def _detached_after_fork(self) -> None:
        """In a forked child: forget the parent's attach, attach again on first use."""
        self._held = _tokens(self._semid)
        self._finalizer = None
        self._handle = _AttachOnUse(self, self._handle)

    def _gone_message(self) -> str:
        what = "anonymous semaphore" if self._name is None else f"semaphore {self._name!r}"
        return f"the {what} was unlinked from the host"

    def _gone(self, exc: BaseException) -> NoReturn:
        self._handle = _Closed(self._gone_message())
        raise SemaphoreClosedError(self._gone_message()) from exc

    # -- hot path -------------------------------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None:
            timeout = check_timeout(timeout)
        try:
            self._handle.acquire()
        except sysv_ipc.BusyError:
            if not block or (timeout is not None and timeout <= 0):
                return False
            try:
                if not _libc.wait(self._semid, _ACQUIRE, timeout):
                    return False
            except OSError as exc:
                if exc.errno in _libc.GONE:
                    self._gone(exc)
                raise
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)
        self._held.append(None)
        return True

    def release(self, n: int = 1) -> None:
        if n.__class__ is not int or n < 1:
            check_count(n)
        held = self._held
        taken = 0
        try:
            while taken < n:
                held.pop()
                taken += 1
        except IndexError:
            held.extend([None] * taken)
            self._refuse_release(n, taken)
        try:
            self._handle.release(delta=n)
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)

    def _refuse_release(self, n: int, held: int) -> NoReturn:
        value = self.value
        if n + value > self._limit:
            raise ValueError(
                f"release(n={n}) would raise the value above limit={self._limit} "
                f"(value is {value}); release only permits you acquired"
            )
        raise ValueError(
            f"release(n={n}), but this process holds {held} permit(s) of this crash-safe "
            "semaphore; the kernel returns a permit to the semaphore when the process that "
            "acquired it exits, so it must be released by that process. Release it where it "
            "was acquired, or use crash_safe=False to hand permits between processes"
        )

    # -- the rest ---------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def crash_safe(self) -> bool:
        return True

    @property
    def value(self) -> int:
        try:
            value: int = self._handle.value
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)
        return value

    @property
    def attached(self) -> int:
        """How many handles, across all processes, have this set open."""
        try:
            return _libc.getval(self._semid, ATTACH)
        except OSError as exc:
            self._gone(exc)

    def close(self) -> None:
        if isinstance(self._handle, _Closed):
            return
        self._handle = _Closed("the semaphore was closed in this process")
        _live.discard(self)
        if self._finalizer is not None:  # None: a forked child that never used it
            self._finalizer()

    def unlink(self) -> None:
        if _libc.remove(self._semid):
            _held.pop(self._semid, None)
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self._handle, _Closed):
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        if self._name is not None:
            return (_open_named, (self._name, self._limit))
        return (SysVSemaphore._open_anonymous, (self._key, self._limit))


def _open_named(name: str, limit: int) -> ProcessSemaphore:
    return ProcessSemaphore(limit, name=name)


def unlink_named(name: str) -> bool:
    """Remove the named crash-safe set from the host; False if there was none."""
    found = find_named(name)
    return found is not None and _libc.remove(found[1])
