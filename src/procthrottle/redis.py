"""Limits that span machines: semaphores whose permits are leases in Redis.

Needs the ``redis`` extra (``pip install 'procthrottle[redis]'``) and a Redis server.
"""

from __future__ import annotations

from ._backends._redis import AsyncRedisSemaphore as AsyncRedisSemaphore
from ._backends._redis import RedisSemaphore as RedisSemaphore
from ._backends._redis import RedisUnavailableError as RedisUnavailableError

__all__ = ["AsyncRedisSemaphore", "RedisSemaphore", "RedisUnavailableError"]
