"""Argument checks shared by every semaphore kind: fail early, name the argument."""

from __future__ import annotations

import math
import re

#: SEMVMX, the largest value a System V semaphore can hold (also SEMAEM, the largest undo).
MAX_LIMIT = 32767
MAX_NAME_LENGTH = 200
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
        raise ValueError(
            f"limit must be <= {maximum} (the kernel's SEMVMX), got {limit}; "
            "use crash_safe=False for larger limits"
        )
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


def check_count(n: object) -> int:
    return check_positive("n", n)


def check_timeout(timeout: object) -> float | None:
    """Return the timeout as a float (None = wait forever); negative means do not wait."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    return float(timeout)
