"""Anonymous rate sets: made under a random key, found again by key, swept after a crash."""

from __future__ import annotations

import secrets

from .._exceptions import SemaphoreClosedError
from .._kernel import _libc
from ._layout import Layout
from ._store import (
    ANONYMOUS_TAG,
    IF_UNUSED,
    RateSet,
    init_ops,
    inspect,
    lookup,
    read_header,
)

_swept = False


def sweep_anonymous() -> None:
    """Remove this user's anonymous rate sets whose every user died (once per process, Linux).

    As for anonymous semaphores (`_naming.sweep_anonymous`): the last user removes the set
    when it closes or exits normally, but a SIGKILL leaves it behind with an attach count of
    0, so the next process of the same user that makes an anonymous rate limiter removes it.
    """
    global _swept
    if _swept:
        return
    _swept = True
    for info in _libc.own_sets():
        try:
            header = read_header(info.semid)
            if (
                header is not None
                and not header.half_made
                and header.tag == ANONYMOUS_TAG
                and _libc.semop(info.semid, IF_UNUSED)  # nobody attached, checked atomically
            ):
                _libc.remove(info.semid)
        except OSError:
            continue


def create_anonymous(layout: Layout) -> RateSet:
    """A new owner-only anonymous set, initialised and attached to by this process."""
    sweep_anonymous()
    init = init_ops(ANONYMOUS_TAG, layout, attach=True)
    while True:
        key = secrets.randbelow(0x7FFFFFFE) + 1
        semid = _libc.create_empty(key, layout.nsems, 0o600)
        if semid is not None:
            _libc.semop(semid, init)
            return RateSet(key, semid, layout)


def open_anonymous(key: int, layout: Layout) -> RateSet:
    semid = lookup(key)
    header = None if semid is None else inspect(semid)
    if (
        semid is None
        or header is None
        or header.layout is None
        or (header.tag, header.layout.key) != (ANONYMOUS_TAG, layout.key)
    ):
        raise SemaphoreClosedError(
            "this anonymous rate limiter no longer exists: every process that used it closed "
            "it or exited. Keep the creating process's RateLimiter alive while others use it, "
            "or give it a name="
        )
    return RateSet(key, semid, layout)
