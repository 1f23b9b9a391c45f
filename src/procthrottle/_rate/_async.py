"""``AsyncRateLimiter``: wait for a rate limiter's slot on the event loop, no thread at all."""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections import deque
from types import TracebackType

import anyio
import sniffio

from .._kernel._validate import check_timeout
from .._typing import Self
from ._base import Reservation
from ._limiter import RateLimiter


class _Waiter:
    __slots__ = ("event", "live", "n", "owns")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = anyio.Event()  # set once, when it becomes the first of its line
        self.live = True  # not yet admitted, cancelled or timed out
        self.owns = False  # it counts on one slot of the line's pool


class _Line:
    """The waiters of one event loop asking one weight, and the slots reserved for them.

    Every waiter reserves one slot when it arrives, as a blocked thread does: a process holds
    as many places in the shared order as it has waiters, whatever kind they are, so equal
    demand gets equal shares across processes. The slots form one pool, in time order, and
    only the first waiter sleeps, until the earliest slot; once admitted it wakes the next.
    So who gets which slot is decided at admission, first come, first served: a waiter that
    leaves early (cancelled, timed out) leaves its slot in the pool, where the next waiter
    of its line uses it. The pool then holds one slot more than the waiters that count on it:
    that surplus is given back to the shared state while it is the latest reservation there,
    and otherwise kept for the next waiter to arrive.

    One line per weight ``n``: a slot reserved for ``n`` units admits exactly ``n`` (a lighter
    waiter would waste the rest, a heavier one cannot use it), so slots are handed on only
    between waiters asking the same weight.
    """

    __slots__ = ("live", "owed", "slots", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[_Waiter] = deque()  # FIFO; the ones that left are skipped lazily
        self.live = 0  # waiters still waiting
        self.owed = 0  # waiters counting on a slot of the pool
        self.slots: deque[Reservation] = deque()  # by time

    def first(self) -> _Waiter | None:
        waiters = self.waiters
        while waiters and not waiters[0].live:
            waiters.popleft()
        return waiters[0] if waiters else None

    def spare(self) -> Reservation | None:
        """The slot a waiter arriving now would be served on, if the pool has one for it."""
        return self.slots[self.owed] if len(self.slots) > self.owed else None

    def add(self, reservation: Reservation) -> None:
        """A new reservation into the pool, in time order (the latest, on this host)."""
        slots = self.slots
        if not slots or slots[-1][0] <= reservation[0]:
            slots.append(reservation)
        else:  # a remote backend's replies may come back out of order
            index = bisect.bisect(slots, reservation[0], key=lambda item: item[0])
            slots.insert(index, reservation)


_get_running_loop = asyncio._get_running_loop


def _remaining_ns(deadline: int | None, now: int) -> int | None:
    return None if deadline is None else max(0, deadline - now)


def _remaining(deadline: int | None, now: int, grace: int = 0) -> float:
    """Seconds until ``deadline`` plus ``grace`` ns (inf for None), for `anyio.move_on_after`."""
    return float("inf") if deadline is None else max(0, deadline + grace - now) / 1e9


class AsyncRateLimiter:
    """Await a `RateLimiter` on asyncio or trio: the wait is a sleep on the event loop.

    Each waiting task reserves its slot in the shared state when it arrives (a few system
    calls that never block), as a blocked thread does, and sleeps on the event loop: 10,000
    waiting tasks cost no thread, and processes with as many waiters, whether threads, asyncio
    or trio tasks, get equal shares. The waiters of one process (per event loop) asking the
    same weight are served first come, first served. A waiter that is cancelled or times out
    leaves its slot to the next waiter of its loop asking that weight; the one slot this leaves
    over goes back to the shared state when no reservation was made after it, and otherwise to
    the next waiter to arrive.

    Args:
        limiter: A `RateLimiter`, or the arguments of an anonymous one: a number per second
            or a rate string such as `"10/s"`.

    Raises:
        TypeError: ``limiter`` is none of those.
        ValueError: A rate that is not a finite number > 0, or an unparseable rate string.
    """

    __slots__ = ("_limiter", "_lock", "_queues")

    #: Whether the limiter is this host's `RateLimiter` (its first try is inlined).
    _local = True

    def __init__(self, limiter: RateLimiter | float | str) -> None:
        if isinstance(limiter, RateLimiter):
            pass
        elif isinstance(limiter, bool) or not isinstance(limiter, (int, float, str)):
            raise TypeError(
                "limiter must be a RateLimiter, a number per second or a rate string such as "
                f"'10/s', not {type(limiter).__name__}"
            )
        else:
            limiter = RateLimiter(limiter)
        self._adopt(limiter)

    def _adopt(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._queues: dict[object, _Line] = {}  # per (event loop, weight)
        self._lock = threading.Lock()

    @property
    def limiter(self) -> RateLimiter:
        """The wrapped `RateLimiter`."""
        return self._limiter

    @property
    def rate(self) -> float:
        """How many acquisitions per `per` seconds."""
        return self._limiter.rate

    @property
    def per(self) -> float:
        """The period of `rate`, in seconds."""
        return self._limiter.per

    @property
    def burst(self) -> int:
        """How many acquisitions may be admitted at once."""
        return self._limiter.burst

    @property
    def name(self) -> str | None:
        """The limiter's host-wide name, or None."""
        return self._limiter.name

    def _line(self, key: object) -> _Line:
        line = self._queues.get(key)
        if line is None:
            with self._lock:
                # Lines nobody waits in any more, whose left-over slots have all passed, go
                # (they would keep the event loop of a finished `asyncio.run` alive).
                now = self._limiter._now_ns()
                for other, idle in list(self._queues.items()):
                    if not idle.live and (not idle.slots or idle.slots[-1][0] < now):
                        del self._queues[other]
                line = self._queues.setdefault(key, _Line())
        return line

    async def acquire(self, n: int = 1, *, timeout: float | None = None) -> bool:
        """Wait on the event loop until `n` units of the rate are allowed.

        Args:
            n: The weight of this acquisition, 1 to `burst`.
            timeout: The longest wait in seconds (None: no limit; 0 or less: do not wait).

        Returns:
            True once admitted; False, reserving nothing, when the wait would be longer than
            `timeout`.

        Raises:
            SemaphoreClosedError: The limiter was closed or unlinked.
        """
        limiter = self._limiter
        if n != 1 or n.__class__ is not int:
            n = limiter._check_n(n)
        seconds = None if timeout is None else check_timeout(timeout)
        loop: object = _get_running_loop()  # asyncio's, in C; None on trio
        if loop is not None:  # asyncio: no checkpoint is owed
            if (loop, n) not in self._queues and (
                limiter._take_now(n) if self._local else self._admit_now(n)
            ):  # allowed now, nobody before us
                return True
        elif sniffio.current_async_library() == "trio":
            import trio

            await anyio.lowlevel.checkpoint_if_cancelled()
            loop = trio.lowlevel.current_trio_token()
            if (loop, n) not in self._queues and (
                limiter._take_now(n) if self._local else self._admit_now(n)
            ):
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return True
        else:
            raise RuntimeError("AsyncRateLimiter.acquire needs a running asyncio or trio loop")
        if seconds is not None and seconds == float("inf"):
            seconds = None
        now = limiter._now_ns()
        deadline = None if seconds is None else now + max(0, int(seconds * 1e9))
        key = (loop, n)
        return await self._wait(key, self._line(key), _Waiter(n), deadline)

    async def _wait(self, key: object, line: _Line, waiter: _Waiter, deadline: int | None) -> bool:
        now_ns = self._limiter._now_ns  # the clock of the slots
        if not line.live:  # slots left by waiters gone: drop those that passed unused
            while line.slots and line.slots[0][0] < now_ns():
                await self._drop(line)
        n = waiter.n
        line.waiters.append(waiter)
        line.live += 1
        admitted = False
        try:
            spare = line.spare()
            if spare is not None:  # a slot given up by a waiter gone
                if deadline is not None and spare[0] > deadline:
                    return False  # the spare slot is the earliest it could get
                waiter.owns = True
                line.owed += 1
            else:
                max_wait = _remaining_ns(deadline, now_ns())
                reservation = await self._reserve(n, max_wait)
                if reservation is None:
                    return False
                line.add(reservation)
                waiter.owns = True
                line.owed += 1
            # Its slot only comes earlier from now on (the deadline is a safety net): the
            # pool holds a slot for every waiter counting on one, the earliest first.
            with anyio.move_on_after(_remaining(deadline, now_ns(), grace=10_000_000)):
                if line.first() is not waiter:
                    await waiter.event.wait()
                slot = line.slots[0][0]
                while (delay := slot - now_ns()) > 0:
                    await anyio.sleep(delay / 1e9)
                line.slots.popleft()  # admitted on the earliest slot
                admitted = True
            return admitted
        finally:
            waiter.live = False
            line.live -= 1
            if waiter.owns:
                line.owed -= 1
            nxt = line.first()
            if nxt is not None:
                nxt.event.set()  # the next waiter sleeps until the earliest slot
            if not admitted and len(line.slots) > line.owed:
                with anyio.CancelScope(shield=True):  # give the surplus back while it is latest
                    while len(line.slots) > line.owed and await self._give_back(line.slots[-1]):
                        line.slots.pop()
            if not line.live and not line.slots and self._queues.get(key) is line:
                del self._queues[key]

    async def _drop(self, line: _Line) -> None:
        """Remove the earliest slot: given back if it is the latest reservation, else lost."""
        reservation = line.slots.popleft()
        with anyio.CancelScope(shield=True):
            await self._give_back(reservation)

    # -- what a backend provides ----------------------------------------------------------
    def _admit_now(self, n: int) -> bool:
        """Take ``n`` at once if they are allowed now, without waiting (False: queue up)."""
        return self._limiter._reserve(n, 0) is not None

    async def _reserve(self, n: int, max_wait: int | None) -> Reservation | None:
        """Reserve the next slot (monotonic ns) unless it is more than ``max_wait`` ns away."""
        return self._limiter._reserve(n, max_wait)

    async def _give_back(self, reservation: Reservation) -> bool:
        """Undo an unused reservation if it is still the latest one."""
        return self._limiter._give_back(reservation)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def __repr__(self) -> str:
        return f"AsyncRateLimiter({self._limiter!r})"
