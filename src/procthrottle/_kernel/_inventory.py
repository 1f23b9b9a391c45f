"""What the CLI shows: this user's named semaphores of both kernels and named rate limiters.

Names come from the owner-only registry (`_registry`), since keys are hashes; each entry is
checked against the kernel, so a name removed by other means is simply not listed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import _libc, _naming, _registry


@dataclass(frozen=True)
class NamedInfo:
    """One named semaphore as the OS reports it (a snapshot).

    Attributes:
        name: Its name.
        crash_safe: Which kernel (both keep a System V set; crash_safe=False has no undo).
        limit: Its limit (0: half-made, its creator died before finishing it).
        value: Free permits now.
        held: Permits taken (`limit - value`).
        attached: Handles with the set open, across processes (None where unknown).
        waiting: Threads blocked waiting for a permit (None where unknown).
        last_pid: The last process that took, returned or waited for a permit (None where
            unknown); the OS does not say who holds permits.
    """

    name: str
    crash_safe: bool
    limit: int
    value: int
    held: int
    attached: int | None = None
    waiting: int | None = None
    last_pid: int | None = None


@dataclass(frozen=True)
class RateInfo:
    """One named rate limiter as the OS reports it (a snapshot).

    Attributes:
        name: Its name.
        rates: Its rates as acquisitions per second, the first one first (a rate made as
            `"600/min"` shows as 10.0: the set keeps only the interval between acquisitions);
            empty when half-made (its creator died before finishing it).
        burst: Its burst (0 when half-made).
        attached: Processes with the limiter open.
        rate_text: The rates in words, e.g. `"10 per 1 s and 8.33333 per 1 s"` (or
            `"half-made"`).
    """

    name: str
    rates: tuple[float, ...]
    burst: int
    attached: int
    rate_text: str


def named_info(name: str, *, crash_safe: bool | None = None) -> list[NamedInfo]:
    """The semaphores called ``name`` (one per kernel that has it; ``crash_safe`` picks one)."""
    found: list[NamedInfo] = []
    sysv = _naming.find_named(name, crash_safe)
    if sysv is not None:
        _, semid, limit = sysv
        try:
            kind = _naming.is_crash_safe(semid)
            value = _libc.getval(semid, _naming.PERMITS)
            if kind is not None:
                found.append(
                    NamedInfo(
                        name,
                        kind,
                        limit,
                        value,
                        max(0, limit - value),
                        attached=_libc.getval(semid, _naming.ATTACH),
                        waiting=_libc.getctl(semid, _naming.PERMITS, _libc.GETNCNT),
                        last_pid=_libc.getctl(semid, _naming.PERMITS, _libc.GETPID) or None,
                    )
                )
        except OSError:
            pass  # removed meanwhile
    return found


def list_named() -> list[NamedInfo]:
    """This user's named semaphores of both kernels that still exist, sorted by name."""
    found: list[NamedInfo] = []
    for name in sorted({name for name, _ in _registry.entries()}):
        found.extend(named_info(name))  # the set says which kernel, whatever the entry
    return found


def unlink_any(name: str, *, crash_safe: bool | None = None) -> bool:
    """Remove ``name`` from the host: a semaphore of either kernel or a rate limiter.

    ``crash_safe`` True or False removes only a semaphore of that kernel. Half-made names
    (a creator died while making them) are removed too. Returns whether anything was removed.
    """
    from . import _sysv

    removed = False
    if crash_safe is None:
        from .._rate import _store

        removed = _store.unlink_named(name)
    return _sysv.unlink_named(name, crash_safe) or removed


def owner_of(name: str) -> int | None:
    """The uid of another user owning a semaphore or rate limiter of this name, if one does.

    `status`, `list` and `unlink` see only this user's objects; this tells the CLI why a
    name it cannot see still exists (Linux: from ``/proc``).
    """
    me = os.geteuid()
    keys = {_naming.key(name), _naming.rate_key(name)}
    for info in _libc.listing():
        if info.key in keys and info.uid != me:
            return info.uid
    return None


def rate_info(name: str) -> RateInfo | None:
    """The named rate limiter ``name`` of this user, or None if there is none."""
    from .._rate import _parse, _store

    found = _store.find_named(name)
    if found is None:
        return None
    _, semid, header = found
    pairs = header.pairs()
    rates = tuple(rate / per for rate, per in pairs)
    try:
        attached = _libc.getval(semid, _store.ATTACH)
    except OSError:
        return None  # removed meanwhile
    text = _parse.describe(pairs) if pairs else "half-made"
    return RateInfo(name, rates, header.burst, attached, text)


def list_rate_limiters() -> list[RateInfo]:
    """This user's named rate limiters that still exist, sorted by name."""
    found = (rate_info(name) for name in _registry.rate_names())
    return [info for info in found if info is not None]
