"""Limits that span machines: semaphores whose permits are leases in Redis, and rate limits.

Needs the `redis` extra (`pip install 'procthrottle[redis]'`) and a Redis server.
"""

from __future__ import annotations

try:
    from ._backends._redis import LeaseLostError as LeaseLostError
    from ._backends._redis import RedisSemaphore as RedisSemaphore
    from ._backends._redis_async import AsyncRedisSemaphore as AsyncRedisSemaphore
    from ._backends._redis_link import RedisUnavailableError as RedisUnavailableError
    from ._backends._redis_rate import RedisRateLimiter as RedisRateLimiter
    from ._backends._redis_rate_async import AsyncRedisRateLimiter as AsyncRedisRateLimiter
except ModuleNotFoundError as exc:  # the extra is missing: say how to get it
    if exc.name is None or exc.name.partition(".")[0] != "redis":
        raise
    raise ImportError(
        "procthrottle.redis needs the redis client library, which is not installed: "
        "pip install 'procthrottle[redis]'"
    ) from exc

__all__ = [
    "AsyncRedisRateLimiter",
    "AsyncRedisSemaphore",
    "LeaseLostError",
    "RedisRateLimiter",
    "RedisSemaphore",
    "RedisUnavailableError",
]
