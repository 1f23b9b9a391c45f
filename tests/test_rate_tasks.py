"""Functions that rate-limiter tests run in child processes (importable under spawn)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

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


def stall_in_update(name: str, marker: str, where: str, extra: list[tuple[float, float]]) -> None:
    """Open the named limiter, then stall forever inside a state update (for SIGKILL).

    ``compute``: after reading the state, before computing the new one; ``swap``: with the
    new state computed, just before the compare-and-swap system call.
    """
    from procthrottle._rate import _clock, _store

    limiter = RateLimiter(50, name=name, burst=2, extra=extra)
    limiter._cache = None  # read the shared state first, as a process that lost a race does

    def stall() -> None:
        record(marker, "in update")
        time.sleep(60)

    if where == "compute":
        real_clock = _clock.now_ns

        def slow_clock() -> int:
            stall()
            return real_clock()

        _clock.now_ns = slow_clock
    else:
        real_semop = _store.semop

        def slow_semop(*args: Any) -> Any:
            stall()
            return real_semop(*args)

        _store.semop = _store._semop = slow_semop  # type: ignore[assignment]
    limiter.acquire()


def fair_worker(
    limiter: RateLimiter, kind: str, waiters: int, path: str, start: Any, seconds: float
) -> None:
    """``waiters`` threads, asyncio or trio tasks acquire for ``seconds`` from the time the
    parent puts in ``start`` (a shared ``(ready barrier, go event, t0 value)``) once every
    process is ready; one line per process: the pid and the times of its admissions."""
    ready, go, shared_t0 = start
    ready.wait()  # imports done
    go.wait()
    t0 = shared_t0.value
    end = t0 + seconds
    times: list[float] = []

    def thread() -> None:
        while (left := end - time.monotonic()) > 0:
            if limiter.acquire(timeout=left):
                times.append(time.monotonic())

    async def task(shared: AsyncRateLimiter) -> None:
        while (left := end - time.monotonic()) > 0:
            if await shared.acquire(timeout=left):
                times.append(time.monotonic())

    async def main() -> None:
        shared = AsyncRateLimiter(limiter)
        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        async with anyio.create_task_group() as tg:
            for _ in range(waiters):
                tg.start_soon(task, shared)

    if kind == "threads":
        import threading

        wait_until(t0)
        pool = [threading.Thread(target=thread) for _ in range(waiters)]
        for worker in pool:
            worker.start()
        for worker in pool:
            worker.join()
    else:
        anyio.run(main, backend=kind)
    record(path, " ".join([str(os.getpid()), *map(repr, times)]))
