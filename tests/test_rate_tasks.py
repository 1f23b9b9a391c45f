"""Functions that rate-limiter tests run in child processes (importable under spawn)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from procthrottle import AsyncRateLimiter, RateLimiter

if TYPE_CHECKING:
    from procthrottle.redis import RedisRateLimiter


def record(path: str, line: str) -> None:
    """Append one line with a single write on an O_APPEND file (atomic among processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def wait_until(t0: float) -> None:
    while (delay := t0 - time.monotonic()) > 0:
        time.sleep(delay)


def async_worker(
    limiter: RateLimiter, path: str, t0: float, end: float, tasks: int, weights: list[int]
) -> None:
    """``tasks`` tasks acquire until ``end``; each admission is recorded as "time weight"."""

    async def task(i: int) -> None:
        k = 0
        while True:
            n = weights[(i + k) % len(weights)]
            k += 1
            left = end - time.monotonic()
            if left <= 0 or not await shared.acquire(n, timeout=left):
                return
            lines.append(f"{time.monotonic()!r} {n}")

    async def main() -> None:
        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(task, i)

    lines: list[str] = []
    shared = AsyncRateLimiter(limiter)
    anyio.run(main)
    if lines:
        record(path, "\n".join(lines))


def sync_loop(limiter: RateLimiter, path: str, seconds: float) -> None:
    """Acquire in a loop, recording each admission, until killed or ``seconds`` pass."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if limiter.acquire(timeout=max(0.0, end - time.monotonic())):
            record(path, f"{time.monotonic()!r} 1 {os.getpid()}")


def acquire_times(limiter: RateLimiter | RedisRateLimiter, count: int, *tag: object) -> list[float]:
    """Acquire ``count`` times; ``tag`` only tells identical submissions apart (Dask)."""
    times = []
    for _ in range(count):
        assert limiter.acquire(timeout=30)
        times.append(time.monotonic())
    return times


def stall_in_update(name: str, marker: str, where: str) -> None:
    """Open the named limiter, then stall forever inside a state update (for SIGKILL)."""
    from procthrottle._rate import _limiter, _store

    limiter = RateLimiter(50, name=name, burst=2)
    if where == "compute":
        real = _limiter.reserve  # type: ignore[attr-defined]

        def slow_reserve(*args: object, **kwargs: object) -> object:
            record(marker, "in update")
            time.sleep(60)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        _limiter.reserve = slow_reserve  # type: ignore[attr-defined,assignment]
    else:
        real_swap = _store.RateSet.swap

        def slow_swap(self: _store.RateSet, old: Sequence[int], new: Sequence[int]) -> bool:
            record(marker, "in update")
            time.sleep(60)
            return real_swap(self, old, new)

        _store.RateSet.swap = slow_swap  # type: ignore[method-assign]
    limiter.acquire()
