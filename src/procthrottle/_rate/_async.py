"""``AsyncRateLimiter``: wait for a rate limiter's slot on the event loop, no thread at all."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType

import anyio
import sniffio

from .._kernel._validate import check_timeout
from .._typing import Self
from ._base import Reservation
from ._limiter import RateLimiter, _monotonic_ns

#: A waiter whose slot is at most this far ahead lets the next waiter of its loop reserve at
#: once, so that a process keeps this much of its queue in the shared order (a process stalled
#: for less than this loses no quota); beyond it, the next waiter reserves when it is admitted.
LOOKAHEAD_NS = 50_000_000


class _Waiter:
    __slots__ = ("cancelled", "event", "n", "turn")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = anyio.Event()
        self.cancelled = False
        self.turn = False  # it may reserve now (the turn passes in FIFO order)


class _Line:
    """The waiters of one event loop: who may reserve next, and slots given up."""

    __slots__ = ("busy", "pending", "spare")

    def __init__(self) -> None:
        self.pending: deque[_Waiter] = deque()
        self.busy = False  # a waiter holds the turn
        self.spare: list[tuple[int, Reservation]] = []  # (n, slot) of cancelled waiters

    def take_spare(self, n: int) -> Reservation | None:
        """A slot a cancelled waiter could not give back, if one holds ``n`` (earliest first).

        Slots whose time has passed are dropped, not used: admitting a waiter now on a slot
        accounted earlier would let several in at once (their quota is lost instead).
        """
        if self.spare:
            now = _monotonic_ns()
            self.spare = [spare for spare in self.spare if spare[1][0] >= now]
        for i, (weight, reservation) in enumerate(self.spare):
            if weight >= n:
                del self.spare[i]
                return reservation
        return None

    def pass_turn(self) -> None:
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.cancelled:
                waiter.turn = True
                waiter.event.set()
                return
        self.busy = False


_get_running_loop = asyncio._get_running_loop


class AsyncRateLimiter:
    """Await a `RateLimiter` on asyncio or trio: the wait is a sleep on the event loop.

    Each acquisition computes its reservation in the shared state (a few system calls that
    never block) and sleeps until its slot, so 10,000 waiting tasks cost no thread. The
    waiters of one process (per event loop) are served first come, first served: only the
    first of them holds a reservation while the others wait behind it, so a cancelled waiter
    costs the others nothing. A waiter cancelled while it holds a reservation gives it back
    (when no reservation was made after it) or hands it to the next waiter of its loop.

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
        self._queues: dict[object, _Line] = {}  # per event loop
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

    def _line(self, loop: object) -> _Line:
        line = self._queues.get(loop)
        if line is None:
            with self._lock:
                line = self._queues.setdefault(loop, _Line())
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
            if loop not in self._queues and (
                limiter._take_now(n) if self._local else self._admit_now(n)
            ):  # allowed now, nobody before us
                return True
        elif sniffio.current_async_library() == "trio":
            import trio

            await anyio.lowlevel.checkpoint_if_cancelled()
            loop = trio.lowlevel.current_trio_token()
            if loop not in self._queues and (
                limiter._take_now(n) if self._local else self._admit_now(n)
            ):
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return True
        else:
            raise RuntimeError("AsyncRateLimiter.acquire needs a running asyncio or trio loop")
        if seconds is not None and seconds == float("inf"):
            seconds = None
        deadline = None if seconds is None else _monotonic_ns() + max(0, int(seconds * 1e9))
        return await self._wait(loop, self._line(loop), _Waiter(n), deadline)

    async def _wait(self, loop: object, line: _Line, waiter: _Waiter, deadline: int | None) -> bool:
        reservation: Reservation | None = None
        try:
            if line.busy or line.pending:
                line.pending.append(waiter)
                if deadline is None:
                    await waiter.event.wait()
                else:
                    with anyio.move_on_after(max(0, deadline - _monotonic_ns()) / 1e9):
                        await waiter.event.wait()
                    if not waiter.turn:
                        return False
            else:
                line.busy = waiter.turn = True
            # Our turn: use a slot a cancelled waiter gave up, or reserve one.
            reservation = line.take_spare(waiter.n)
            if reservation is None:
                max_wait = None if deadline is None else max(0, deadline - _monotonic_ns())
                reservation = await self._reserve(waiter.n, max_wait)
                if reservation is None:
                    return False
            slot = reservation[0]
            if slot - _monotonic_ns() <= LOOKAHEAD_NS:
                waiter.turn = False
                line.pass_turn()  # the next waiter reserves now, behind us
            while (delay := slot - _monotonic_ns()) > 0:
                await anyio.sleep(delay / 1e9)
            reservation = None  # admitted
            return True
        finally:
            waiter.cancelled = True
            if reservation is not None:
                with anyio.CancelScope(shield=True):
                    if not await self._give_back(reservation):
                        line.spare.append((waiter.n, reservation))  # for the next waiter
                    else:  # now the one reserved before ours may be the latest: undo it too
                        line.spare.sort(key=lambda spare: spare[1][0])
                        while line.spare and await self._give_back(line.spare[-1][1]):
                            line.spare.pop()
            if waiter.turn:
                waiter.turn = False
                line.pass_turn()
            if not line.busy and not line.pending and self._queues.get(loop) is line:
                del self._queues[loop]  # spare slots nobody waits for are lost (one each)

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
