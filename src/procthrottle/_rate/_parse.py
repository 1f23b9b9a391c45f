"""Rates from numbers or strings ("10/s", "600/min", "5000/h"), checked up front."""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Sequence

#: The forms a rate string may take, for error messages.
ACCEPTED = (
    '"<count>/<unit>" or "<count> per <unit>", unit one of s, sec, second, min, minute, h, hr, '
    'hour, d, day (plural allowed) optionally with a number, e.g. "10/s", "600/min", "5000/h", '
    '"2.5/s", "100/10s", "10 per second"'
)
_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_NUMBER = r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
_RATE_RE = re.compile(
    rf"\s*(?P<count>{_NUMBER})\s*(?:/|\s+per\s+)\s*(?P<mult>{_NUMBER})?\s*(?P<unit>[A-Za-z]+)\s*"
)
#: One emission interval must stay below this many nanoseconds (about 52 days) times burst,
#: so that every theoretical arrival time fits the 60 bits the shared state keeps.
MAX_SPAN_NS = 2**52


def check_number(what: str, value: object) -> float:
    """A finite float > 0 (bool refused), or TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond any float
        result = math.inf
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"{what} must be a finite number, got {reprlib.repr(value)}")
    if result <= 0:
        raise ValueError(f"{what} must be > 0, got {reprlib.repr(value)}")
    return result


def parse_rate(text: str) -> tuple[float, float]:
    """``"600/min"`` -> ``(600.0, 60.0)``: the count and the period in seconds."""
    match = _RATE_RE.fullmatch(text)
    unit = None if match is None else _UNITS.get(match["unit"].lower())
    if match is None or unit is None:
        raise ValueError(f"cannot parse the rate {text!r}: use {ACCEPTED}")
    count = float(match["count"])
    per = unit * float(match["mult"] or 1)
    if not (math.isfinite(count) and count > 0 and math.isfinite(per) and per > 0):
        raise ValueError(f"the rate {text!r} must have a count and a period above zero")
    return count, per


def rate_pair(rate: object, per: object = 1.0, *, what: str = "rate") -> tuple[float, float]:
    """Check one ``(rate, per)`` pair given as numbers or as a rate string."""
    if isinstance(rate, str):
        if per != 1.0 or isinstance(per, bool):
            raise ValueError(
                f"{what} is the string {rate!r}, which already names its period: leave per "
                "at its default"
            )
        return parse_rate(rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(
            f"{what} must be a number or a string such as '10/s', not {type(rate).__name__}"
        )
    return check_number(what, rate), check_number("per", per)


def check_burst(burst: object) -> int:
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError(f"burst must be an int, not {type(burst).__name__}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    if burst > 32767:
        raise ValueError(f"burst must be <= 32767, got {burst}")
    return burst


def check_extra(extra: object) -> list[tuple[float, float]]:
    """More ``(rate, per)`` pairs (or rate strings) to enforce together with the first."""
    if isinstance(extra, (str, bytes)) or not isinstance(extra, Sequence):
        raise TypeError(
            "extra must be a sequence of (rate, per) pairs or rate strings, e.g. "
            f"[(500, 60)] or ['500/min'], not {type(extra).__name__}"
        )
    pairs = []
    for i, item in enumerate(extra):
        if isinstance(item, str):
            pairs.append(parse_rate(item))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append(rate_pair(item[0], item[1], what=f"extra[{i}] rate"))
        else:
            raise TypeError(
                f"extra[{i}] must be a (rate, per) tuple or a rate string, got {item!r}"
            )
    return pairs


def interval_ns(rate: float, per: float, burst: int) -> int:
    """The main rate's emission interval (``per / rate``) in nanoseconds, rounded up."""
    exact = per / rate * 1e9
    if exact < 1:
        raise ValueError(f"the rate {rate:g} per {per:g} s is above one per nanosecond")
    if exact * burst >= MAX_SPAN_NS:  # also inf: a rate of 1e-300 per second
        raise ValueError(
            f"the rate {rate:g} per {per:g} s with burst={burst} spans more than "
            f"{MAX_SPAN_NS / 1e9 / 86400:.0f} days; use a shorter period"
        )
    return math.ceil(exact)  # up: never more than asked


def quotas_ns(pairs: Sequence[tuple[float, float]], max_count: int) -> tuple[tuple[int, int], ...]:
    """The window quotas ``(count, period in ns)`` of ``extra``, in a canonical order.

    A count that is not whole is rounded down (never more than asked); the period up.
    """
    result = set()
    for i, (count, per) in enumerate(pairs):
        whole = math.floor(count)
        if whole < 1:
            raise ValueError(
                f"extra[{i}] allows {count:g} per {per:g} s: a window quota counts whole "
                "acquisitions, so at least 1; use a longer period"
            )
        if whole > max_count:
            raise ValueError(
                f"extra[{i}] allows {whole} per {per:g} s: a window quota counts at most "
                f"{max_count}; use a shorter period (e.g. {max_count * per / whole:g} s for "
                f"{max_count})"
            )
        if per * 1e9 >= MAX_SPAN_NS:
            raise ValueError(
                f"extra[{i}]: the period {per:g} s is longer than "
                f"{MAX_SPAN_NS / 1e9 / 86400:.0f} days"
            )
        result.add((whole, math.ceil(per * 1e9)))
    return tuple(sorted(result))


def check_n(n: object, burst: int, quota: int | None = None) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > burst:
        raise ValueError(
            f"n={n} is more than burst={burst}: it could never be admitted; "
            f"raise burst to at least {n} or acquire in smaller parts"
        )
    if quota is not None and n > quota:
        raise ValueError(
            f"n={n} is more than the smallest window quota ({quota}): it could never be "
            "admitted; acquire in smaller parts"
        )
    return n


def describe(pairs: Sequence[tuple[float, float]]) -> str:
    return " and ".join(f"{rate:g} per {per:g} s" for rate, per in pairs)
