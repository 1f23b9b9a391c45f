"""Argument checks shared by every semaphore kind: fail early, name the argument."""

from __future__ import annotations

import re

#: SEMVMX, the largest value a System V semaphore can hold (also SEMAEM, the largest undo):
#: the largest limit of both kernels.
MAX_LIMIT = 32767
MAX_NAME_LENGTH = 200
#: Timeouts above this many seconds (about 31 years) wait forever: the kernels' clocks
#: overflow long before a float does.
MAX_TIMEOUT = 1e9
DEFAULT_MODE = 0o600
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")


def check_positive(name: str, value: object) -> int:
    """An int >= 1 (bool refused), or TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_limit(limit: object, *, maximum: int = MAX_LIMIT) -> int:
    limit = check_positive("limit", limit)
    if limit > maximum:
        raise ValueError(f"limit must be <= {maximum}, got {limit}")
    return limit


def check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"name must be 1 to {MAX_NAME_LENGTH} characters of [A-Za-z0-9._-], got {name!r}"
        )
    return name


def check_mode(mode: object) -> int:
    """Permission bits of a named object: an int within 0o777 whose owner may read and write."""
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be an int such as 0o600, not {type(mode).__name__}")
    if mode & ~0o777 or mode & 0o600 != 0o600:
        raise ValueError(
            f"mode must be permission bits within 0o777 that include 0o600 (owner read and "
            f"write), such as 0o600, 0o660 or 0o666; got {mode:#o}"
        )
    return mode


def check_count(n: object) -> int:
    return check_positive("n", n)


def check_timeout(timeout: object) -> float | None:
    """Return the timeout as a float (None = wait forever); negative means do not wait.

    Infinite and huge timeouts (above `MAX_TIMEOUT`) become None: they wait forever.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout != timeout:  # NaN, without math.isnan's OverflowError on huge ints
        raise ValueError("timeout must not be NaN")
    if timeout > MAX_TIMEOUT:
        return None
    if timeout < -MAX_TIMEOUT:  # -inf, or an int too large for a float: do not wait
        return -1.0
    return float(timeout)


def check_acquire(block: object, timeout: object) -> float | None:
    """``acquire``'s arguments: the timeout to use (None = forever).

    As `multiprocessing.Semaphore.acquire` (not `threading`, which raises): with ``block``
    false, a timeout is checked but changes nothing (no wait).
    """
    return check_timeout(timeout)
