"""What a semaphore set says about itself: its size (which kernel), limit and tag.

A crash-safe set has five semaphores (``PERMITS``, ``ATTACH``, ``LIMIT``, ``TAG_HI``,
``TAG_LO``); a ``crash_safe=False`` set has a sixth, ``ROOM``. The size is fixed by the
``semget`` that made the set, so it tells the kernel of any set, half-made ones too. Also the
sweep of anonymous sets whose every user died (by the kernel's attach count, so it is right
whatever PID namespace their users run in).
"""

from __future__ import annotations

import errno
import time

from . import _libc

PERMITS, ATTACH, LIMIT, TAG_HI, TAG_LO, ROOM = range(6)
#: Succeeds only while nobody is attached (a wait-for-zero that does not wait).
IF_UNUSED = _libc.ops((ATTACH, 0, _libc.IPC_NOWAIT))
#: The size of a crash-safe set, and of a ``crash_safe=False`` one (``ROOM`` added).
NSEMS, NSEMS_SHARED = 5, 6
SIZES = (NSEMS, NSEMS_SHARED)
ANONYMOUS_TAG = (0, 0)
#: A set whose limit is still 0 this long after its creation lost its creator: removable.
HALF_MADE_AGE = 60.0


def nsems(crash_safe: bool) -> int:
    """The size of a semaphore set of this kernel."""
    return NSEMS if crash_safe else NSEMS_SHARED


def size(semid: int) -> int | None:
    """How many semaphores the set has, if it is 5 or 6 (a semaphore of ours); else None."""
    if _has(semid, NSEMS_SHARED):  # a seventh semaphore: not one of ours
        return None
    if _has(semid, NSEMS):
        return NSEMS_SHARED
    _libc.getval(semid, 0)  # raises if the set is gone, rather than misjudge its size
    found = _layout(semid)  # None (fewer than five), or five
    return None if found is None else NSEMS


def _has(semid: int, num: int) -> bool:
    """Whether the set has a semaphore number ``num`` (EINVAL: it has fewer)."""
    try:
        _libc.getval(semid, num)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


def is_crash_safe(semid: int) -> bool | None:
    """Which kernel the semaphore set belongs to (None: not one of ours)."""
    found = size(semid)
    return None if found is None else found == NSEMS


def _layout(semid: int) -> tuple[tuple[int, int], int] | None:
    """``(tag, limit)`` of a semaphore set of either kernel; None if it has another size."""
    if _has(semid, NSEMS_SHARED):  # a seventh semaphore: not one of ours
        return None
    try:
        # The limit first: the set-up semop writes limit and tag at once, so a nonzero limit
        # means the tag read next is final (read the other way round, a set-up landing in
        # between would pair a zero tag with a real limit).
        limit = _libc.getval(semid, LIMIT)
        return (_libc.getval(semid, TAG_HI), _libc.getval(semid, TAG_LO)), limit
    except OSError as exc:
        if exc.errno == errno.EINVAL and _libc.getval(semid, 0) >= 0:
            return None  # fewer than five semaphores
        raise


def describe_anonymous(key_: int, semid: int, crash_safe: bool = True) -> int | None:
    """The limit of the anonymous set ``semid`` of this kernel; None if it is not one."""
    try:
        found = _layout(semid)
        if is_crash_safe(semid) is not crash_safe:
            return None
    except OSError:
        return None
    if found is None or found[0] != ANONYMOUS_TAG or found[1] == 0:
        return None
    return found[1]


_swept = False


def sweep_anonymous() -> None:
    """Remove this user's anonymous sets whose every user died (once per process, Linux).

    The last user of an anonymous set removes it when it closes or exits normally; a SIGKILL
    leaves the set behind with an attach count of 0. Any later process of the same user
    removes such sets when it makes its first anonymous semaphore.
    """
    global _swept
    if _swept:
        return
    _swept = True
    now = time.time()
    for info in _libc.own_sets():
        if info.nsems not in SIZES:
            continue
        semid = info.semid
        try:
            found = _layout(semid)
            if found is None or found[0] != ANONYMOUS_TAG:
                continue
            if found[1] == 0:
                if now - info.ctime > HALF_MADE_AGE:
                    _libc.remove(semid)
            elif _libc.semop(semid, IF_UNUSED):  # nobody attached, checked atomically
                _libc.remove(semid)
        except OSError:
            continue

