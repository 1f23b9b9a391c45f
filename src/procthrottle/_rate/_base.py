"""What every rate limiter of the package shares, wherever its state lives (here or in Redis).

Its rates and burst, ``with limiter:``, turning ``block``/``timeout`` into the longest wait a
reservation may have, and sleeping until a reserved slot -- giving the reservation back if the
sleep is interrupted (Ctrl-C, a signal handler's exception), so no quota is lost silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from .._kernel._validate import check_timeout
from .._typing import Self

#: ``(slot in `_now_ns` ns, old state, new state)``: what a reservation took, to give it back.
Reservation = tuple[int, list[int], list[int]]


def max_wait_ns(block: bool, timeout: float | None) -> int | None:
    """The longest wait allowed for a reservation in ns: 0 for ``block=False``, None forever."""
    if not block:
        return 0
    seconds = check_timeout(timeout)
    if seconds is None or seconds == float("inf"):
        return None
    return max(0, int(seconds * 1e9))


class RateLimits:
    """The shared part of `RateLimiter` and `RedisRateLimiter`."""

    __slots__ = ()

    _pairs: Sequence[tuple[float, float]]
    _burst: int

    def acquire(self, n: int = 1, *, block: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover

    def _give_back(self, reservation: Reservation) -> bool:
        raise NotImplementedError  # pragma: no cover

    def _now_ns(self) -> int:
        """Now on the clock of this limiter's slots (this host's monotonic clock)."""
        return time.monotonic_ns()

    def _sleep_until(self, reservation: Reservation) -> bool:
        """Sleep until the reserved slot; True. Interrupted, give the reservation back."""
        slot = reservation[0]
        now_ns = self._now_ns
        try:
            while (delay := slot - now_ns()) > 0:
                time.sleep(delay / 1e9)
        except BaseException:
            self._give_back(reservation)
            raise
        return True

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    @property
    def rate(self) -> float:
        """How many acquisitions per `per` seconds (the first rate)."""
        return self._pairs[0][0]

    @property
    def per(self) -> float:
        """The period of `rate`, in seconds."""
        return self._pairs[0][1]

    @property
    def burst(self) -> int:
        """How many acquisitions may be admitted at once."""
        return self._burst

    @property
    def extra(self) -> tuple[tuple[float, float], ...]:
        """The `extra` rates enforced together with the main rate (`RateLimiter`: window quotas)."""
        return tuple(self._pairs[1:])
