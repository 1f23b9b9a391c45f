"""RateLimiter speed and accuracy, as ratios against peers measured in this same run.

    pip install -e '.[bench]'
    python benchmarks/bench_rate.py [--quick]

1. uncontended acquisition (the limit far above the request rate), async: AsyncRateLimiter vs
   aiolimiter.AsyncLimiter (in-process only, the floor; target <= 3x);
2. uncontended acquisition, sync: RateLimiter vs pyrate-limiter's MultiprocessBucket (target:
   >= 10x faster) and vs limits' in-process MemoryStorage;
3. the CPU a process burns while it waits for its slot (target: ~0, it sleeps);
4. accuracy: 8 processes x 50 async tasks against one named limiter at 200/s, with weighted
   acquisitions, and with two rates at once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid
from typing import Any

import anyio
from _common import per_call

from procthrottle import AsyncRateLimiter, RateLimiter

FAST = 1e9  # acquisitions per second: never the bottleneck


async def _async_loop(acquire: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await acquire()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def async_uncontended(n: int) -> list[str]:
    limiter = RateLimiter(FAST)
    ours = asyncio.run(_async_loop(AsyncRateLimiter(limiter).acquire, n))
    rows = [f"| async acquire, AsyncRateLimiter (asyncio) | {ours * 1e6:.2f} µs | | |"]
    ours_trio = anyio.run(_async_loop, AsyncRateLimiter(limiter).acquire, n, backend="trio")
    rows.append(f"| async acquire, AsyncRateLimiter (trio) | {ours_trio * 1e6:.2f} µs | | |")
    try:
        from aiolimiter import AsyncLimiter
    except ImportError:
        rows.append("| async acquire, aiolimiter.AsyncLimiter | not installed | | |")
    else:
        base = asyncio.run(_async_loop(AsyncLimiter(FAST, 1).acquire, n))
        rows.append(
            f"| async acquire, aiolimiter.AsyncLimiter (in-process) | {base * 1e6:.2f} µs "
            f"| AsyncRateLimiter / aiolimiter = {ours / base:.2f}x | <= 3x |"
        )
    limiter.close()
    return rows


def sync_uncontended(n: int) -> list[str]:
    limiter = RateLimiter(FAST)

    def ours_loop(k: int) -> None:
        acquire = limiter.acquire
        for _ in range(k):
            acquire()

    ours = per_call(ours_loop, n)
    rows = [f"| sync acquire, RateLimiter (cross-process) | {ours * 1e6:.2f} µs | | |"]
    try:
        from pyrate_limiter import Duration, Limiter, MultiprocessBucket, Rate
    except ImportError:
        rows.append("| sync acquire, pyrate-limiter MultiprocessBucket | not installed | | |")
    else:
        bucket = MultiprocessBucket.init([Rate(10**7, Duration.SECOND)])
        peer = Limiter(bucket)
        admitted = 0

        def pyrate_loop(k: int) -> None:
            nonlocal admitted
            for _ in range(k):
                # blocking=True: with blocking=False its first calls are refused
                admitted += bool(peer.try_acquire("bench"))

        calls = max(50, n // 50)
        base = per_call(pyrate_loop, calls, repeats=3)
        assert admitted == 3 * calls, "pyrate-limiter refused calls: not a fair measure"
        rows.append(
            f"| sync acquire, pyrate-limiter MultiprocessBucket | {base * 1e6:.1f} µs "
            f"| RateLimiter is {base / ours:.0f}x faster | >= 10x |"
        )
        peer.close()
    try:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter
    except ImportError:
        rows.append("| sync acquire, limits MemoryStorage | not installed | | |")
    else:
        window = MovingWindowRateLimiter(MemoryStorage())
        item = RateLimitItemPerSecond(10**7)

        def limits_loop(k: int) -> None:
            for _ in range(k):
                window.hit(item, "bench")

        base = per_call(limits_loop, max(50, n // 10), repeats=3)
        rows.append(
            f"| sync acquire, limits MovingWindow + MemoryStorage (in-process) | "
            f"{base * 1e6:.2f} µs | RateLimiter / limits = {ours / base:.2f}x | |"
        )
    limiter.close()
    return rows


def _wait_for_slot(limiter: RateLimiter, use_async: bool, out: Any) -> None:
    if use_async:
        anyio.run(anyio.sleep, 0)  # imports and loop set-up outside the measure
    cpu, wall = time.process_time(), time.monotonic()
    if use_async:
        anyio.run(AsyncRateLimiter(limiter).acquire)
    else:
        limiter.acquire()
    out.send((time.process_time() - cpu, time.monotonic() - wall))


def cpu_while_waiting(wait: float) -> list[str]:
    rows = []
    for use_async in (False, True):
        limiter = RateLimiter(1, wait, burst=1)  # one per `wait` seconds
        limiter.acquire()  # the next slot is `wait` seconds away
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_wait_for_slot, args=(limiter, use_async, send))
        child.start()
        cpu, wall = receive.recv()
        child.join()
        kind = "AsyncRateLimiter" if use_async else "RateLimiter"
        rows.append(
            f"| CPU burnt while waiting {wall:.2f} s for a slot, {kind} "
            f"| {cpu * 1e3:.1f} ms = {cpu / wall:.2%} of a core | | ~0 (sleeps) |"
        )
        limiter.close()
    return rows


def _accuracy_worker(
    limiter: RateLimiter, t0: float, end: float, tasks: int, weights: list[int], out: Any
) -> None:
    admitted: list[tuple[float, int]] = []

    async def task(shared: AsyncRateLimiter, i: int) -> None:
        k = i
        while (left := end - time.monotonic()) > 0:
            n = weights[k % len(weights)]
            k += 1
            if not await shared.acquire(n, timeout=left):
                return
            admitted.append((time.monotonic(), n))

    async def run() -> None:
        shared = AsyncRateLimiter(limiter)
        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(task, shared, i)

    anyio.run(run)
    out.put(admitted)


def _most_in_window(events: list[tuple[float, int]], width: float) -> int:
    best = total = lo = 0
    for t, n in events:
        total += n
        while events[lo][0] < t - width:
            total -= events[lo][1]
            lo += 1
        best = max(best, total)
    return best


def accuracy(
    seconds: float,
    rates: list[tuple[float, float]],
    burst: int = 10,
    weights: tuple[int, ...] = (1,),
    label: str = "",
) -> list[str]:
    name = f"bench-rate-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(*rates[0], burst=burst, name=name, extra=rates[1:])
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    t0 = time.monotonic() + 1.0
    end = t0 + seconds
    procs = [
        ctx.Process(target=_accuracy_worker, args=(limiter, t0, end, 50, list(weights), out))
        for _ in range(8)
    ]
    for p in procs:
        p.start()
    events = sorted(e for _ in procs for e in out.get())
    for p in procs:
        p.join()
    limiter.unlink()
    total = sum(n for _, n in events)
    expected = min(burst + rate * seconds / per for rate, per in rates)
    what = " and ".join(f"{rate:g} per {per:g} s" for rate, per in rates)
    rows = [
        f"| admitted{label}, 8 processes x 50 async tasks, {what}, burst {burst}, {seconds:g} s "
        f"| {total} | {expected:g} = burst + rate x T | {total / expected - 1:+.2%} |"
    ]
    for rate, per in rates:
        worst = _most_in_window(events, per)
        rows.append(
            f"| most admitted{label} in any {per:g} s window (recorded after wake-up) "
            f"| {worst} | {burst + rate:g} = burst + rate | |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args()
    n = 2_000 if args.quick else 100_000
    print("| measure | result | compared | target |\n|---|---|---|---|")
    rows = async_uncontended(n) + sync_uncontended(n)
    rows += cpu_while_waiting(0.5 if args.quick else 2.0)
    seconds = 1.0 if args.quick else 10.0
    rows += accuracy(seconds, [(200.0, 1.0)])
    rows += accuracy(seconds, [(400.0, 1.0)], weights=(1, 2, 3), label=" (weights 1-3)")
    rows += accuracy(seconds, [(200.0, 1.0), (300.0, 2.0)], label=" (two rates)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
