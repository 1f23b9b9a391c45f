"""Limits that span machines: semaphores whose permits are leases in Redis, and rate limits.

Needs the ``redis`` extra (``pip install 'procthrottle[redis]'``) and a Redis server.
"""

from __future__ import annotations

from ._backends._redis import AsyncRedisSemaphore as AsyncRedisSemaphore
from ._backends._redis import RedisSemaphore as RedisSemaphore
from ._backends._redis import RedisUnavailableError as RedisUnavailableError
from ._backends._redis_rate import AsyncRedisRateLimiter as AsyncRedisRateLimiter
from ._backends._redis_rate import RedisRateLimiter as RedisRateLimiter

__all__ = [
    "AsyncRedisRateLimiter",
    "AsyncRedisSemaphore",
    "RedisRateLimiter",
    "RedisSemaphore",
    "RedisUnavailableError",
]
