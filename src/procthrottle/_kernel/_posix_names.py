"""The names of the fast kernel: POSIX semaphores in /dev/shm, their owners, their clean-up.

A named semaphore is three POSIX semaphores derived from the name (``free``, ``room`` and
``limit``); an anonymous one is two, named after its creator's pid so that the next process of
the same user can remove them when that creator was killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from _multiprocessing import SemLock, sem_unlink
from pathlib import Path
from typing import Any

from .._exceptions import SemaphoreClosedError
from ._owner import check_owner
from ._validate import POSIX_MAX_LIMIT

_SEMAPHORE = 1  # SemLock kind; created owner-only (0o600) by SemLock itself
_SHM = Path("/dev/shm") if sys.platform.startswith("linux") else None
ANON_PREFIX = "/pt-anon-"


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
    except (FileNotFoundError, PermissionError):  # none, or another user's (sticky /dev/shm)
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


#: How many times an open starts over because the name was unlinked (and made anew) meanwhile.
_REOPEN_TRIES = 5


def open_or_create_named(name: str, limit: int | None, mode: int) -> tuple[Any, Any, int]:
    """``(free, room, limit)`` of the named semaphore; ``limit=None`` only opens.

    The three are opened one by one, so another process may unlink the name (and make it
    anew) in between, leaving this one with semaphores of two generations: an open whose
    files changed under it (their inodes) starts over.
    """
    from . import _naming, _registry

    names = os_names(name)
    made = False
    for _ in range(_REOPEN_TRIES):
        before = _inodes(names)
        free, room, existing, created = _open_once(name, limit, mode)
        made = made or created
        if before is not None and _inodes(names) == before:
            break
    else:
        raise SemaphoreClosedError(
            f"the semaphore {name!r} (crash_safe=False) was unlinked {_REOPEN_TRIES} times "
            "while this process opened it: stop the program that keeps unlinking it, then "
            "open it again"
        )
    if made:
        if _naming.exists(name):  # a crash-safe creator raced us: neither wins
            unlink_named(name)
            raise _naming._other_kernel(name, crash_safe=True)
        _registry.add(name, False)  # listed by `procthrottle list`, even if a creator died
    return free, room, existing


def _inodes(names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The inodes of these semaphores' files; None if one is missing (empty: OS unknown)."""
    if _SHM is None:  # pragma: no cover - macOS: no files to look at
        return ()
    try:
        return tuple(os.stat(str(_path(os_name))).st_ino for os_name in names)
    except FileNotFoundError:
        return None


def _open_once(name: str, limit: int | None, mode: int) -> tuple[Any, Any, int, bool]:
    """``(free, room, limit, made)``: open the three, making what is missing (``made``)."""
    from . import _naming

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
    free, free_made = _get(free_name, existing, existing, what, mode)
    room, room_made = _get(room_name, 0, existing, what, mode)
    return free, room, existing, created or free_made or room_made


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


