"""``AsyncRedisRateLimiter``: await a `RedisRateLimiter` slot; no Redis call on the loop's thread.

Each waiting task makes its reservation in one worker thread per event loop (in the order the
tasks asked, FIFO within a process; the thread's limiter goes away with the loop, and no
client is kept per loop), then sleeps until its slot on the loop. Each task holds its own
reservation in the server's order, as a blocked thread does, which makes processes fair to
each other whatever they wait with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import anyio.to_thread
import redis

from .._rate._async import AsyncRateLimiter
from .._rate._base import Reservation, max_wait_ns
from ._redis_async import _limiter
from ._redis_rate import RedisRateLimiter

_order: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "procthrottle_redis_rate_thread"
)


def _in_order() -> anyio.CapacityLimiter:
    """This event loop's one thread for reservations: they reach Redis in the order the
    tasks asked (FIFO within a process); it goes away with the loop."""
    try:
        return _order.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _order.set(limiter)
        return limiter


class _Box:
    """A reservation made in a thread for a task that may have stopped waiting for it."""

    __slots__ = ("abandoned", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.result: Reservation | None = None


class AsyncRedisRateLimiter(AsyncRateLimiter):
    """``await`` a `RedisRateLimiter` on asyncio or trio.

    Each reservation is one script call made in a worker thread (a small limiter per event
    loop, freed with the loop), so no Redis call runs on the event loop's thread and no
    client is kept per loop. A call is bounded by the waiter's timeout, and cancelling the
    waiter returns at once: a reservation the thread makes after that is given back by the
    thread. Each waiting task holds its own reservation in the server's order, as a blocked
    thread does, so processes get shares in proportion to their demand whatever they wait
    with; a cancelled waiter gives its reservation back when it can. Making one does not
    call Redis (it may be made on an event loop's thread): a name that exists with other
    rates is refused by the first acquisition, with `ValueError`.

    Args:
        client_or_url: A `redis.Redis` client or a `redis://` URL.
        name: The limiter's name in Redis.
        rate: Acquisitions per `per` seconds, or a string such as `"10/s"`.
        per: The period of `rate` in seconds.
        burst: How many acquisitions may be admitted at once (>= 1).
        extra: More `(rate, per)` pairs enforced together with the first.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad rate, burst or name (a name that exists with other rates is
            refused by the first acquisition).
    """

    __slots__ = ()

    _local = False

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        name: str,
        rate: float | str,
        per: float = 1.0,
        *,
        burst: int = 1,
        extra: Sequence[tuple[float, float] | str] = (),
    ) -> None:
        # No Redis call here, where an event loop may run: the name's rates are checked by
        # the first reservation (on the server, in the same script).
        sync = RedisRateLimiter.__new__(RedisRateLimiter)
        sync._setup(client_or_url, name, rate, per, burst, extra)
        self._adopt(sync)  # type: ignore[arg-type]

    @property
    def limiter(self) -> RedisRateLimiter:  # type: ignore[override]
        """The wrapped `RedisRateLimiter`."""
        return self._redis

    @property
    def _redis(self) -> RedisRateLimiter:
        return self._limiter  # type: ignore[return-value]

    async def acquire(self, n: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until `n` units of the rate are allowed, without blocking the event loop.

        Each waiting task holds its own reservation in the server's order, as a blocked
        thread does: so processes with equal demand get equal shares, whatever mix of
        threads, asyncio and trio tasks they wait with. A task cancelled or timed out gives
        its reservation back when it is still the latest one (else that slot goes unused:
        the bound holds either way).

        Args:
            n: The weight of this acquisition, 1 to `burst`.
            timeout: The longest wait in seconds (None: no limit; 0 or less: do not wait).

        Returns:
            True once admitted; False, reserving nothing, when the wait would be longer than
            `timeout` (or Redis did not answer within it).

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            SemaphoreClosedError: The limiter was closed or unlinked.
        """
        limiter = self._redis
        n = limiter._check_n(n)
        max_wait = max_wait_ns(True, timeout)
        await anyio.lowlevel.checkpoint_if_cancelled()
        reservation = None
        # the call's own time is bounded by max_wait; so is the wait for this loop's thread
        with anyio.move_on_after(float("inf") if max_wait is None else max_wait / 1e9 + 0.1):
            reservation = await self._reserve_in_thread(n, max_wait)
        if reservation is None:
            return False
        try:
            while (delay := reservation[0] - time.monotonic_ns()) > 0:
                await anyio.sleep(delay / 1e9)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._give_back(reservation)
            raise
        return True

    async def _reserve_in_thread(self, n: int, max_wait: int | None) -> Reservation | None:
        limiter = self._redis
        if limiter._closed:
            limiter._raise_closed()
        box = _Box()

        def reserve() -> Reservation | None:
            reservation = limiter._reserve(n, max_wait)
            with box.lock:
                if not box.abandoned:
                    box.result = reservation
                    return reservation
            if reservation is not None:  # nobody waits for it any more
                limiter._give_back(reservation)
            return None

        try:
            return await anyio.to_thread.run_sync(reserve, abandon_on_cancel=True,
                                                  limiter=_in_order())
        except BaseException:
            with box.lock:
                box.abandoned = True
                made, box.result = box.result, None
            if made is not None:  # made, but the task was cancelled as it came back
                threading.Thread(target=limiter._give_back, args=(made,), daemon=True).start()
            raise

    async def _give_back(self, reservation: Reservation) -> bool:
        limiter = self._redis
        with anyio.move_on_after(1.0):  # best effort: the quota is only lost, never exceeded
            return await anyio.to_thread.run_sync(limiter._give_back, reservation,
                                                  abandon_on_cancel=True, limiter=_limiter())
        return False

    async def aclose(self) -> None:
        """Close the wrapped limiter (this adapter keeps no connection of its own)."""
        self._redis.close()
