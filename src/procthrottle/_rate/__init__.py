"""Rate limits across processes: GCRA state in System V semaphores, sync and async."""

from __future__ import annotations

from ._async import AsyncRateLimiter as AsyncRateLimiter
from ._limiter import RateLimiter as RateLimiter
from ._parse import parse_rate as parse_rate


def as_rate_limiter(rate: RateLimiter | str | float | None) -> RateLimiter | None:
    """The `rate=` argument of `throttle`, the pools and the CLI, as a `RateLimiter`.

    Args:
        rate: A `RateLimiter` (returned as is), a rate string such as `"10/s"` or a number of
            acquisitions per second (a new anonymous limiter), or None.

    Returns:
        The limiter, or None when `rate` is None.

    Raises:
        TypeError: `rate` is of another type (an `AsyncRateLimiter` gives its limiter).
        ValueError: The rate cannot be parsed or is not > 0.
    """
    if rate is None or isinstance(rate, RateLimiter):
        return rate
    if isinstance(rate, AsyncRateLimiter):
        return rate.limiter
    if isinstance(rate, bool) or not isinstance(rate, (str, int, float)):
        raise TypeError(
            "rate must be a RateLimiter, a rate string such as '10/s' or '600/min', a number "
            f"per second, or None; not {type(rate).__name__}"
        )
    return RateLimiter(rate)


__all__ = ["AsyncRateLimiter", "RateLimiter", "as_rate_limiter", "parse_rate"]
