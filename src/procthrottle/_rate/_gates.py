"""`rate=` as the throttle decorator and the pools take it: one gate, sync or async.

Everything that accepts `rate=` (``@throttle``, ``ThrottledProcessPool``, ``ThrottledExecutor``,
``procthrottle run --rate``) accepts the same things: a `RateLimiter`, an `AsyncRateLimiter`, a
rate string (``"10/s"``), a number per second, or a Redis rate limiter. This module turns them
into what the caller needs: a blocking ``acquire`` for sync code and worker processes, an
awaitable one for async code (which sleeps on the event loop, never in a thread).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._async import AsyncRateLimiter
from ._limiter import RateLimiter

SyncGate = Callable[[float | None], bool]
AsyncGate = Callable[[float | None], Awaitable[bool]]


class RateGate:
    """The two faces of one `rate=` argument; either may be None when it cannot exist."""

    __slots__ = ("_async", "limiter", "sync")

    def __init__(self, limiter: Any, sync: SyncGate | None, async_: Any):
        self.limiter = limiter
        self.sync = sync
        self._async = async_

    @property
    def awaitable(self) -> bool:
        """Whether async code can wait for this rate on its event loop."""
        return self._async is not None

    async def wait(self, timeout: float | None) -> bool:
        """Await a turn (False when `timeout` passed first)."""
        assert self._async is not None, "checked by the caller through `awaitable`"
        return bool(await self._async.acquire(timeout=timeout))


def rate_gate(rate: object) -> RateGate | None:
    """The gate of a `rate=` argument, or None for None.

    Raises:
        TypeError: `rate` is not one of the accepted kinds.
        ValueError: A rate string or number that is not a valid rate.
    """
    if rate is None:
        return None
    if isinstance(rate, AsyncRateLimiter):  # AsyncRedisRateLimiter too
        sync_limiter = rate.limiter
        return RateGate(rate, _sync(sync_limiter), rate)
    if isinstance(rate, RateLimiter):
        return RateGate(rate, _sync(rate), AsyncRateLimiter(rate))
    if isinstance(rate, str | int | float) and not isinstance(rate, bool):
        limiter = RateLimiter(rate)
        return RateGate(limiter, _sync(limiter), AsyncRateLimiter(limiter))
    acquire = getattr(rate, "acquire", None)
    if callable(acquire):  # duck-typed: RedisRateLimiter (blocks) or an async-only limiter
        if inspect.iscoroutinefunction(acquire):
            return RateGate(rate, None, rate)
        return RateGate(rate, _sync(rate), None)
    raise TypeError(
        "rate must be a RateLimiter, an AsyncRateLimiter, a rate string such as '10/s' or "
        "'600/min', a number per second, a RedisRateLimiter, or None; "
        f"not {type(rate).__name__}"
    )


def sync_rate_limiter(rate: object) -> Any:
    """`rate=` for code that blocks (pool workers, executors): an object with ``acquire()``.

    Returns None for None; a `RateLimiter` (made from a string or number if need be), the
    `RedisRateLimiter` behind an `AsyncRedisRateLimiter`, or the object given.

    Raises:
        TypeError: `rate` is not a rate, or can only be awaited.
    """
    gate = rate_gate(rate)
    if gate is None:
        return None
    if gate.sync is None:
        raise TypeError(
            f"rate={rate!r} can only be awaited; pool workers and executors block: pass a "
            "RateLimiter (or a RedisRateLimiter) instead"
        )
    return gate.limiter.limiter if isinstance(gate.limiter, AsyncRateLimiter) else gate.limiter


def _sync(limiter: Any) -> SyncGate:
    acquire = limiter.acquire

    def take(timeout: float | None) -> bool:
        return bool(acquire() if timeout is None else acquire(timeout=timeout))

    return take
