"""Adapters between the command line and the kernels: open, describe, list and unlink names.

Every use of the kernels' private modules by the CLI is in this file, so a change in the kernel
layer has one place to be met here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol

from .._exceptions import ProcThrottleError
from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import MAX_LIMIT
from ._errors import EXIT_FAILED, EXIT_USAGE, CliError

if TYPE_CHECKING:  # imported by the functions that need it: `run` does not
    from .._kernel._inventory import NamedInfo, RateInfo


class Limiter(Protocol):
    """What ``run`` needs of a rate limiter (``procthrottle.RateLimiter``'s sync interface)."""

    def acquire(self, n: int = 1, *, block: bool = True, timeout: float | None = None) -> bool:
        """Wait for a turn; False when none came in time."""

    def close(self) -> None:
        """Drop this handle."""


def open_semaphore(name: str, limit: int | None, *, crash_safe: bool) -> ProcessSemaphore:
    """Open (``limit`` None) or open-or-create NAME; errors become one-line ``CliError``.

    A NAME that exists with another limit or under the other kernel is told in the command
    line's own words: which option to leave out or add.
    """
    kind = "" if crash_safe else " (--no-crash-safe)"
    if limit is not None and limit > MAX_LIMIT:
        raise CliError(
            f"--limit {limit} is too large: a semaphore allows at most {MAX_LIMIT} permits "
            "(the kernel's largest semaphore value, with or without --no-crash-safe)",
            EXIT_USAGE,
        )
    try:
        if limit is None:
            return ProcessSemaphore.open(name, crash_safe=crash_safe)
        return ProcessSemaphore(limit, name=name, crash_safe=crash_safe)
    except FileNotFoundError:
        raise _mismatch(name, limit, crash_safe) or CliError(
            f"no semaphore named {name!r}{kind} on this host; give --limit K to create it",
            EXIT_USAGE,
        ) from None
    except (ValueError, TypeError, FileExistsError) as exc:  # another limit or kind, ...
        raise _mismatch(name, limit, crash_safe) or CliError(str(exc), EXIT_USAGE) from None
    except (OSError, ProcThrottleError) as exc:  # PermissionError too
        raise CliError(f"cannot open semaphore {name!r}: {exc}", EXIT_FAILED) from None


def _mismatch(name: str, limit: int | None, crash_safe: bool) -> CliError | None:
    """NAME exists, but not as asked: say which option to change; None if that is not it."""
    unlink = f"or remove it first with `procthrottle unlink {name}` if nothing uses it"
    for info in describe(name):
        if info.crash_safe != crash_safe:
            if info.crash_safe:
                fix = "drop --no-crash-safe to join it"
                what = "a crash-safe semaphore"
            else:
                fix = "add --no-crash-safe to join it"
                what = "a semaphore made with --no-crash-safe"
            return CliError(f"{name!r} is {what}: {fix}, {unlink}", EXIT_USAGE)
        if limit is not None and info.limit and info.limit != limit:
            return CliError(
                f"semaphore {name!r} exists with limit {info.limit}, not {limit}: leave out "
                f"--limit to join it whatever its limit, {unlink}",
                EXIT_USAGE,
            )
    return None


def rate_name(name: str) -> str:
    """The rate limiter that ``run --name NAME --rate R`` shares: ``NAME.rate``.

    A name is one object of one kind, so the semaphore NAME and its rate limiter cannot share
    it; the suffix keeps both reachable from one ``--name``.
    """
    return f"{name}.rate"


def rate_limiter(name: str, rate: str) -> Limiter:
    """The host-wide rate limiter ``NAME.rate`` admitting ``rate`` (``"10/s"``) for ``run``."""
    from .._kernel._validate import MAX_NAME_LENGTH
    from .._rate import RateLimiter

    if len(rate_name(name)) > MAX_NAME_LENGTH:
        longest = MAX_NAME_LENGTH - len(rate_name(""))
        raise CliError(
            f"--rate: NAME can be at most {longest} characters with --rate (its rate limiter "
            f"is NAME.rate), not {len(name)}",
            EXIT_USAGE,
        )
    try:
        return RateLimiter(rate, name=rate_name(name))
    except (ValueError, TypeError) as exc:  # a bad rate, or the name exists with other rates
        raise CliError(f"--rate {rate}: {exc}", EXIT_USAGE) from None
    except (OSError, ProcThrottleError, NotImplementedError) as exc:  # PermissionError too
        raise CliError(f"cannot open rate limiter {rate_name(name)!r}: {exc}",
                       EXIT_FAILED) from None


def describe(name: str) -> list[NamedInfo]:
    """NAME under each kernel where it exists (normally one: one name is one semaphore)."""
    if sys.platform == "win32":  # pragma: no cover - no named semaphores on Windows
        return []
    from .._kernel import _inventory

    return _inventory.named_info(name)


def list_named() -> list[NamedInfo]:
    """This user's named semaphores, every kind (from the kernel layer's owner-only registry)."""
    if sys.platform == "win32":  # pragma: no cover
        return []
    from .._kernel import _inventory

    return _inventory.list_named()


def describe_rate(name: str) -> RateInfo | None:
    """The rate limiter NAME, if there is one (a name is one object of one kind)."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    from .._kernel import _inventory

    return _inventory.rate_info(name)


def list_rates() -> list[RateInfo]:
    """This user's named rate limiters (from the same owner-only registry)."""
    if sys.platform == "win32":  # pragma: no cover
        return []
    from .._kernel import _inventory

    return _inventory.list_rate_limiters()


def owner_of(name: str) -> int | None:
    """The uid of another user owning NAME (a semaphore or rate limiter), if one does."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    from .._kernel import _inventory

    return _inventory.owner_of(name)


def unlink(name: str) -> bool:
    """Remove NAME under every kernel (half-made ones too); False if it existed under none."""
    if sys.platform == "win32":  # pragma: no cover
        return False
    from .._kernel import _inventory

    return _inventory.unlink_any(name)
