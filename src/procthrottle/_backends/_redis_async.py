"""``AsyncRedisSemaphore``: await a `RedisSemaphore` permit; no Redis call on the loop's thread.

A task's acquire makes one script call in a worker thread (its own small limiter per event
loop, not anyio's default one): it takes a free permit, or queues the task's token in Redis.
A queued task then awaits its wake-up on the loop, costing no thread: the handle's listener
thread wakes it when a release grants it the permit. A task cancelled or timed out gives its
place (or a permit granted at that moment) back from the handle's worker thread; releases are
made there too, so ``release()`` never blocks the loop.
"""

from __future__ import annotations

import time
from typing import overload

import anyio
import anyio.lowlevel
import anyio.to_thread
import redis

from .._async._semaphore import AsyncSemaphore
from .._async._wakeup import new_waiter
from .._kernel._validate import check_timeout
from ._redis import LeaseLostError, RedisSemaphore
from ._redis_link import CallTimedOut
from ._redis_waiting import FAILED, GRANTED

#: Threads per event loop that make the acquire calls of its tasks.
CALL_THREADS = 8
_threads: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "procthrottle_redis_threads"
)


def _limiter() -> anyio.CapacityLimiter:
    """This event loop's thread limiter (it goes away with the loop)."""
    try:
        return _threads.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(CALL_THREADS)
        _threads.set(limiter)
        return limiter


class AsyncRedisSemaphore(AsyncSemaphore):
    """``await`` a `RedisSemaphore` on asyncio or trio.

    No Redis call runs on the event loop's thread once it is built: a task's acquire makes
    one call in a worker thread, then, if it must wait, awaits its turn in the server's queue
    (first come, first served across every client) on the loop, with no thread and no polling;
    `release` hands the release to a background thread. A Redis outage while tasks wait
    reaches them as `RedisUnavailableError`. `value` is the number of free permits in the last
    reply from Redis (a snapshot: reading it makes no call). Building it makes one round trip
    (it checks the limit), so build it before the loop starts or accept that one call.

    Args:
        client_or_url: A ``redis.Redis`` client or a ``redis://`` URL; or a `RedisSemaphore`
            alone, to await it (what ``AsyncSemaphore(redis_semaphore)`` makes).
        name: The semaphore's name in Redis.
        limit: Its number of permits.
        lease: Seconds after which a dead holder's permit comes back.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad name, limit or lease, or a name that exists with another limit.
        RedisUnavailableError: Redis cannot be reached.
    """

    @overload
    def __init__(
        self, client_or_url: redis.Redis | str, name: str, limit: int, *, lease: float = 30.0
    ) -> None: ...
    @overload
    def __init__(self, client_or_url: RedisSemaphore) -> None: ...
    def __init__(
        self,
        client_or_url: redis.Redis | str | RedisSemaphore,
        name: str | None = None,
        limit: int | None = None,
        *,
        lease: float = 30.0,
    ) -> None:
        if isinstance(client_or_url, RedisSemaphore):  # AsyncSemaphore(RedisSemaphore(...))
            if name is not None or limit is not None:
                raise TypeError("AsyncRedisSemaphore(sem) takes a RedisSemaphore alone")
            super().__init__(client_or_url)
            return
        if name is None or limit is None:
            raise TypeError("AsyncRedisSemaphore needs client_or_url, name and limit")
        super().__init__(RedisSemaphore(client_or_url, name, limit, lease=lease))

    @property
    def _redis(self) -> RedisSemaphore:
        sem = self._sem
        assert isinstance(sem, RedisSemaphore)
        return sem

    @property
    def value(self) -> int:
        """Free permits in the last reply from Redis (a snapshot; it makes no call)."""
        return self._redis._free

    @property
    def lease_lost(self) -> bool:
        """Whether a permit held through this semaphore in this process lost its lease."""
        return self._redis.lease_lost

    async def acquire(self, *, timeout: float | None = None) -> bool:
        """Take a permit without blocking the event loop; False if ``timeout`` passed first.

        Always a checkpoint (also on asyncio). Cancelled or timed out, the task leaves
        nothing behind: its place in the queue, or a permit granted at that moment, goes
        back.

        Args:
            timeout: Seconds to wait at most (None: forever).

        Raises:
            SemaphoreClosedError: The handle was closed.
            RedisUnavailableError: Redis cannot be reached.
            ValueError: ``timeout`` is NaN.
            TypeError: ``timeout`` is not a number.
        """
        seconds = check_timeout(timeout)
        if seconds is not None and seconds == float("inf"):
            seconds = None
        await anyio.lowlevel.checkpoint_if_cancelled()
        started = time.monotonic()
        sem = self._redis
        sem._check_open()
        local = sem._mine()
        token = sem._token(local)
        waiter = new_waiter()
        waiting = local.waiting
        waiting.register(token, waiter)
        done = False
        try:
            with anyio.move_on_after(seconds if seconds is not None else float("inf")):
                status = await anyio.to_thread.run_sync(
                    sem._try_acquire, token, True, seconds, abandon_on_cancel=True,
                    limiter=_limiter(),
                )
                if status == 0:
                    waiting.mark_queued(token)
                    await waiter.wait()
                    if waiter.state == FAILED:
                        waiter.raise_error()
                    status = 1
                done = status == 1
                if done:
                    waiting.settle(token)
                    sem._took(local, token)
                    return True
                return False
        except CallTimedOut:
            if seconds is None or time.monotonic() < started + seconds - 0.05:
                raise sem._link.timed_out("an acquire") from None  # the call's own limit
        except ValueError:  # the name has another limit: nothing was done
            done = True
            waiting.settle(token)
            raise
        finally:
            if not done:
                settled = waiting.settle(token)
                if settled is waiter and waiter.state == GRANTED:
                    waiting.release_later([token])  # granted as we gave up: to the next one
                else:
                    waiting.abandon(token)
        return False

    def release(self) -> None:
        """Return a permit this process holds, from a background thread (no Redis call here).

        Raises `LeaseLostError` if its lease is already known lost (it is released all the
        same); a loss found by the release itself is logged.

        Raises:
            ValueError: This process holds no permit of the handle; nothing changes.
            LeaseLostError: The permit's lease was already known lost (it is released).
            SemaphoreClosedError: The handle was closed.
        """
        sem = self._redis
        sem._check_open()
        local = sem._mine()
        tokens = sem._take_back(local, 1)
        known = local.lost.intersection(tokens)
        local.lost.difference_update(tokens)
        local.waiting.release_later(tokens)
        if known:
            raise LeaseLostError(
                f"the lease of a permit of {sem.name!r} ran out before this release, so "
                "another holder may have run meanwhile; the permit is released"
            )
