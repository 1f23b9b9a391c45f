"""Finding and making System V sets: one key per name, initialised by one atomic ``semop``.

A name hashes to exactly one key (no probing: two creators that probed differently could end on
two sets). ``semget(IPC_CREAT | IPC_EXCL)`` picks one creator, but leaves a set of zeros; the set
gets its limit and tag from one ``semop`` that applies only while the limit is still 0, and that
*any* opener may perform. So a creator that stalls or dies after ``semget`` delays nobody: the
next opener finishes the set itself, atomically, and every creator then reads the same limit.

Both semaphore kernels live here, at the same key: a crash-safe set has five semaphores, a
``crash_safe=False`` set six (the sixth, ``ROOM``, bounds releases: see ``_shared``). The size
is fixed by the one ``semget`` that made the set, so two creators of different kernels can never
both win a name, and an opener of the other kernel gets a clear error instead of a second
semaphore.

Rate limiters (``procthrottle._rate._store``) make their sets through the same `claim` in a key
space of their own (`rate_key`), and one name is one kind: `kind_holding` tells which kind
already holds a name, and every creator checks it again once its set exists, so two racing
creators of different kinds cannot both win.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import secrets
from collections.abc import Callable
from typing import TypeVar

import sysv_ipc

from . import _libc
from ._layout import (
    ANONYMOUS_TAG,
    ATTACH,
    HALF_MADE_AGE,
    IF_UNUSED,
    LIMIT,
    NSEMS,
    NSEMS_SHARED,
    PERMITS,
    ROOM,
    SIZES,
    TAG_HI,
    TAG_LO,
    _layout,
    describe_anonymous,
    is_crash_safe,
    nsems,
    size,
    sweep_anonymous,
)
from ._owner import NameConflictError, check_owner

__all__ = [
    "ANONYMOUS_TAG",
    "ATTACH",
    "HALF_MADE_AGE",
    "IF_UNUSED",
    "LIMIT",
    "NSEMS",
    "NSEMS_SHARED",
    "PERMITS",
    "ROOM",
    "SIZES",
    "TAG_HI",
    "TAG_LO",
    "_layout",
    "describe_anonymous",
    "is_crash_safe",
    "nsems",
    "size",
    "sweep_anonymous",
]

def tag(name: str) -> tuple[int, int]:
    digest = hashlib.blake2b(name.encode(), digest_size=4, person=b"procthrottle.tag").digest()
    value = int.from_bytes(digest, "big")
    hi, lo = (value >> 15) & 0x7FFF, value & 0x7FFF
    return (hi or 1), lo  # never the anonymous tag


def _key(name: str, space: str) -> int:
    digest = hashlib.blake2b(f"{space}:{name}".encode(), digest_size=4, person=b"procthrottle.key")
    return (int.from_bytes(digest.digest(), "big") & 0x7FFFFFFF) or 1  # 0 is IPC_PRIVATE


def key(name: str) -> int:
    """The one System V key of the crash-safe semaphore ``name``."""
    return _key(name, "0")


def rate_key(name: str) -> int:
    """The one System V key of the rate limiter ``name`` (a key space of its own)."""
    return _key(name, "rate")


def _init_ops(limit: int, the_tag: tuple[int, int], *, attach: bool) -> ctypes.Array[_libc.SemBuf]:
    ops = [
        (LIMIT, 0, _libc.IPC_NOWAIT),  # only while nobody has initialised it
        (PERMITS, limit, 0),
        (LIMIT, limit, 0),
        (TAG_HI, the_tag[0], 0),  # also stamps TAG_HI's sempid: who initialised the set
        (TAG_LO, the_tag[1], 0),
    ]
    if attach:
        ops.append((ATTACH, 1, _libc.SEM_UNDO))
    return _libc.ops(*ops)


def credentials(key_: int, semid: int) -> tuple[int, int, int, int]:
    """``(uid, cuid, gid, mode)`` of the set; PermissionError if we may not even read it."""
    try:
        handle = sysv_ipc.Semaphore(key_)
        if handle.id != semid:
            raise OSError(errno.EIDRM, "the set was replaced meanwhile")
        return handle.uid, handle.cuid, handle.gid, handle.mode
    except sysv_ipc.PermissionsError as exc:
        raise PermissionError(errno.EACCES, str(exc)) from None
    except sysv_ipc.ExistentialError:
        raise OSError(errno.EIDRM, "the set was removed meanwhile") from None


def check_access(key_: int, semid: int, what: str, mode: int) -> None:
    """PermissionError unless the set is ours, or shared as ``mode`` accepts."""
    try:
        uid, cuid, gid, object_mode = credentials(key_, semid)
    except PermissionError:
        raise PermissionError(
            f"{what} (System V key {key_:#x}) belongs to another user and is not readable by "
            "you; named objects are private to their owner. Choose another name, or ask "
            "that user (or root) to remove it with `procthrottle unlink`"
        ) from None
    check_owner(what, uid=uid, cuid=cuid, gid=gid, object_mode=object_mode, mode=mode)


def _create(key_: int, mode: int, nsems: int = NSEMS) -> int | None:
    return _libc.create_empty(key_, nsems, mode)


def create_anonymous(limit: int, crash_safe: bool = True) -> tuple[int, int]:
    """A new owner-only anonymous set, initialised and attached to by this process."""
    sweep_anonymous()
    while True:
        key_ = secrets.randbelow(0x7FFFFFFE) + 1
        semid = _create(key_, 0o600, nsems(crash_safe))
        if semid is not None:
            _libc.semop(semid, _init_ops(limit, ANONYMOUS_TAG, attach=True))
            return key_, semid


_T = TypeVar("_T")


def claim(
    key_: int,
    what: str,
    mode: int,
    nsems: int | None,
    settle: Callable[[int, bool], _T],
    missing: Callable[[], Exception],
) -> tuple[int, _T, bool]:
    """``(semid, settle(semid, created), created)`` of the set at ``key_``, made if need be.

    The one way both kinds of named set are made: ``semget(IPC_CREAT | IPC_EXCL)`` makes a set
    of ``nsems`` zeros with permissions ``mode`` (``nsems=None`` only opens); an existing set
    is used only if `check_access` allows it. ``settle`` reads the set and, if it is still
    half-made, finishes it with one guarded ``semop`` that any opener may perform (so nobody
    waits for a stalled or dead creator). A set removed meanwhile is made again.

    Raises:
        PermissionError: The set belongs to another user and ``mode`` does not share it.
        Exception: ``missing()`` when only opening and there is no set.
    """
    while True:
        created = False
        semid = None if nsems is None else _create(key_, mode, nsems)
        if semid is None:
            semid = _lookup(key_)
            if semid is None:
                if nsems is None:
                    raise missing()
                continue  # removed since our semget: create it again
        else:
            created = True
        try:
            if not created:
                check_access(key_, semid, what, mode)
            return semid, settle(semid, created), created
        except OSError as exc:
            if exc.errno in _libc.GONE:
                continue  # removed meanwhile (EINVAL) or between the calls (EIDRM)
            if exc.errno == errno.EACCES:
                raise PermissionError(f"{what}: {exc.strerror}") from None
            raise


def foreign_key(what: str, key_: int, holder: str) -> NameConflictError:
    """The error for a key held by a set that is not this name's."""
    return NameConflictError(
        f"{what}: its System V key {key_:#x} is used by {holder}; choose another name, or "
        f"remove that set (ipcrm -S {key_:#x}) if it is stale"
    )


def open_or_create_named(
    name: str, limit: int | None, mode: int, crash_safe: bool = True
) -> tuple[int, int, int, bool]:
    """``(key, semid, limit, created)`` of the named set; ``limit=None`` only opens.

    Both kernels use the one key of the name; the set's size says which kernel made it, and
    the other kernel is refused before it touches the set (even a half-made one).

    Raises ValueError for another limit, PermissionError for another user's set,
    NameConflictError for another kernel, kind or program, FileNotFoundError (only opening).
    """
    from . import _registry

    what = f"semaphore {name!r}" if crash_safe else f"semaphore {name!r} (crash_safe=False)"
    key_, the_tag = key(name), tag(name)
    if limit is not None:
        refuse_other_kind(name, "semaphore")

    finished = False  # this process's set-up semop made the set (whoever created it)

    def settle(semid: int, created: bool) -> tuple[tuple[int, int], int] | None:
        nonlocal finished
        if not created:
            kind = is_crash_safe(semid)
            if kind is not None and kind is not crash_safe:
                if limit is None:
                    raise _not_found(name, crash_safe=crash_safe)
                raise _other_kernel(name, crash_safe=kind)
        found = None if created else _layout(semid)
        if limit is not None and (created or (found is not None and found[1] == 0)):
            # finishes a half-made set (ours, or a dead or stalled creator's); a no-op if
            # someone else finished it meanwhile
            finished = _libc.semop(semid, _init_ops(limit, the_tag, attach=False))
            found = _layout(semid)
        return found

    semid, found, created = claim(
        key_,
        what,
        mode,
        None if limit is None else nsems(crash_safe),
        settle,
        lambda: _not_found(name, crash_safe=crash_safe),
    )
    if found is None or (found[0] != the_tag and found[1] != 0):  # not ours
        holder = "a set of another program" if found is None else "another semaphore name"
        raise foreign_key(what, key_, holder)
    existing = found[1]
    if existing == 0:  # opening without a limit a set whose creator has not finished
        raise _not_found(name, half_made=True, crash_safe=crash_safe)
    if limit is not None and existing != limit:
        raise ValueError(
            f"{what} already exists with limit={existing}, not {limit}; open it with "
            f"limit={existing} (or ProcessSemaphore.open({name!r}"
            f"{'' if crash_safe else ', crash_safe=False'})), or unlink it first "
            f"(`procthrottle unlink {name}`)"
        )
    if created and _exists_at(rate_key(name)):  # a rate limiter's creator raced us: neither wins
        _libc.remove(semid)
        raise kind_conflict(name, "semaphore", RATE_LIMITER)
    if created or finished:  # listed by `procthrottle list`, even if its creator died
        _registry.add(name, crash_safe)
    return key_, semid, existing, created


#: The kinds a name can be (see `kind_holding`).
CRASH_SAFE, POSIX, RATE_LIMITER = (
    "crash-safe semaphore",
    "crash_safe=False semaphore",
    "rate limiter",
)


def _semaphore_kind(name: str) -> str | None:
    """`CRASH_SAFE` or `POSIX` if a semaphore set (half-made too) has the name's key."""
    try:
        semid = _libc.lookup(key(name))
        if semid is None:
            return None
        return POSIX if is_crash_safe(semid) is False else CRASH_SAFE
    except OSError as exc:
        if exc.errno in _libc.GONE:
            return None
        return CRASH_SAFE  # pragma: no cover - cannot tell: the name is taken, say so


def _exists_at(key_: int) -> bool:
    try:
        return _libc.lookup(key_) is not None
    except OSError:  # pragma: no cover - cannot tell: say yes, refusing is the safe side
        return True


def kind_holding(name: str, *, exclude: str | None = None) -> str | None:
    """Which kind of object (`CRASH_SAFE`, `POSIX`, `RATE_LIMITER`) has the name, if any.

    Half-made objects count: their name is taken. ``exclude`` skips the caller's own kind.
    """
    semaphore = _semaphore_kind(name)
    if semaphore is not None and semaphore != exclude:
        return semaphore
    if exclude != RATE_LIMITER and _exists_at(rate_key(name)):
        return RATE_LIMITER
    return None


def kind_conflict(name: str, wanted: str, existing: str) -> NameConflictError:
    """The error for a name that another kind of object has (one name, one kind)."""
    return NameConflictError(
        f"{name!r} is the name of a {existing}, so it cannot name a {wanted} too (one name is "
        f"one object); choose another name, or unlink the {existing} first "
        f"(`procthrottle unlink {name}`)"
    )


def refuse_other_kind(name: str, wanted: str) -> None:
    """NameConflictError if a rate limiter has the name and a semaphore is wanted, or the
    other way round (the two semaphore kernels have their own, more specific, errors)."""
    if wanted == RATE_LIMITER:
        other = kind_holding(name, exclude=RATE_LIMITER)
    else:
        other = RATE_LIMITER if _exists_at(rate_key(name)) else None
    if other is not None:
        raise kind_conflict(name, wanted, other)


def _lookup(key_: int) -> int | None:
    try:
        return _libc.lookup(key_)
    except PermissionError:  # pragma: no cover - semget(key, 0, 0) asks for no permission
        raise PermissionError(
            f"System V key {key_:#x} belongs to another user's set; choose another name"
        ) from None


def _not_found(
    name: str, *, half_made: bool = False, crash_safe: bool = True
) -> FileNotFoundError:
    flag = "" if crash_safe else ", crash_safe=False"
    if half_made:
        return FileNotFoundError(
            f"semaphore {name!r} is half-made (its creator stopped before giving it a limit); "
            f"create it with ProcessSemaphore(limit, name={name!r}{flag}), which finishes it, "
            f"or remove it with `procthrottle unlink {name}`"
        )
    hint = ""
    other = _semaphore_kind(name)
    if other is not None and (other == CRASH_SAFE) is not crash_safe:
        hint = f"; a semaphore with crash_safe={not crash_safe} has this name: open it so"
    elif _exists_at(rate_key(name)):
        hint = "; a rate limiter has this name (one name is one object)"
    kind = "crash-safe semaphore" if crash_safe else "crash_safe=False semaphore"
    return FileNotFoundError(
        f"no {kind} named {name!r} exists; create it with "
        f"ProcessSemaphore(limit, name={name!r}{flag}){hint}"
    )


def _other_kernel(name: str, *, crash_safe: bool) -> NameConflictError:
    """The error for a name whose semaphore has the other kernel (``crash_safe`` is its)."""
    return NameConflictError(
        f"semaphore {name!r} already exists with crash_safe={crash_safe}; open it with "
        f"crash_safe={crash_safe}, or unlink it first (`procthrottle unlink {name}`)"
    )


def exists(name: str) -> bool:
    """Whether a System V set (half-made or not) holds one of the name's keys: a semaphore's
    (of either kernel) or a rate limiter's."""
    return _exists_at(key(name)) or _exists_at(rate_key(name))


def find_named(name: str, crash_safe: bool | None = None) -> tuple[int, int, int] | None:
    """``(key, semid, limit)`` of the named set (limit 0: half-made), or None.

    ``crash_safe`` True or False finds only a set of that kernel.
    """
    key_ = key(name)
    try:
        semid = _libc.lookup(key_)
        if semid is None:
            return None
        found = _layout(semid)
        if crash_safe is not None and is_crash_safe(semid) is not crash_safe:
            return None
    except OSError:
        return None
    if (
        found is None
        or found[0] not in (tag(name), ANONYMOUS_TAG)
        or (found[0] == ANONYMOUS_TAG and found[1] != 0)
    ):
        return None
    return key_, semid, found[1]
