"""AsyncSemaphore speed, as ratios against baselines measured in this same run.

    python benchmarks/bench_async.py [--quick]

1. uncontended acquire+release vs asyncio.Semaphore (target <= 2x with crash_safe=False);
2. 2,000 tasks, limit 4, one process, on the default crash-safe kernel vs asyncio.Semaphore
   (target <= 1.5x), on trio vs trio.Semaphore, vs anyio.CapacityLimiter, and vs the naive
   ``anyio.to_thread.run_sync(sem.acquire)`` adapter;
3. cross-process handoff: a release in process A wakes an awaiting task in process B (target
   p50 <= 2 ms; p99 shown), and the CPU a waiting process burns (target <= 1% of a core);
4. 10,000 waiters: wall time and the most threads alive at once;
5. fairness: share of turns and p99 wait per process, for an async process against four
   processes doing blocking acquires, and for five async processes (limit 1, 50 ms holds).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import resource
import threading
import time
from typing import Any

import anyio
import anyio.to_thread
from _common import HEADER, handoff_latencies, row

from procthrottle import AsyncSemaphore, ProcessSemaphore


async def uncontended(sem: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await sem.acquire()
            sem.release()
        best = min(best, (time.perf_counter() - start) / n)
    return best


class NaiveAdapter:
    """What people write today: a thread per waiter through anyio's default limiter."""

    def __init__(self, sem: Any) -> None:
        self.sem = sem

    async def acquire(self) -> bool:
        return bool(await anyio.to_thread.run_sync(self.sem.acquire))

    def release(self) -> None:
        self.sem.release()


async def fan_out(sem: Any, tasks: int) -> tuple[float, int]:
    """Wall time for ``tasks`` tasks that each hold a permit across one yield; peak threads."""
    peak_threads = threading.active_count()

    async def one() -> None:
        nonlocal peak_threads
        await sem.acquire()
        try:
            peak_threads = max(peak_threads, threading.active_count())
            await asyncio.sleep(0)
        finally:
            sem.release()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return time.perf_counter() - start, peak_threads


def aiometer_time(repeats: int, tasks: int) -> float | None:
    """Best wall time of aiometer's ``run_all(max_at_once=4)`` over the same tasks."""
    try:
        import aiometer
    except ImportError:
        return None

    async def one() -> None:
        await asyncio.sleep(0)

    async def run() -> float:
        start = time.perf_counter()
        await aiometer.run_all([one for _ in range(tasks)], max_at_once=4)
        return time.perf_counter() - start

    return min(asyncio.run(run()) for _ in range(repeats))


def interleaved(repeats: int, tasks: int, **makers: Any) -> dict[str, float]:
    """Best wall time of each contender, run in turn so that noise hits them alike."""
    best = dict.fromkeys(makers, float("inf"))
    for _ in range(repeats):
        for name, make in makers.items():
            gc.collect()
            best[name] = min(best[name], asyncio.run(fan_out(make(), tasks))[0])
    return best


def _awaiting_child(sem: ProcessSemaphore, events: Any, stamps: Any, trials: int) -> None:
    go, ready, done = events

    async def main() -> None:
        asem = AsyncSemaphore(sem)
        for i in range(trials):
            while not go.is_set():
                await asyncio.sleep(0.0005)
            go.clear()
            ready.set()
            await asem.acquire()
            stamps[i] = time.monotonic()
            asem.release()
            done.set()

    asyncio.run(main())


def _idle_waiter(sem: ProcessSemaphore, seconds: float, out: Any) -> None:
    async def main() -> None:
        asem = AsyncSemaphore(sem)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        ok = await asem.acquire(timeout=seconds)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out[0], out[1] = cpu / wall, float(ok)

    asyncio.run(main())


def waiting_cpu(seconds: float) -> float:
    """Fraction of a core used by a process whose task waits for a permit held elsewhere."""
    ctx = multiprocessing.get_context("fork")
    sem = ProcessSemaphore(1)
    sem.acquire()
    out = ctx.Array("d", 2, lock=False)
    child = ctx.Process(target=_idle_waiter, args=(sem, seconds, out))
    child.start()
    child.join()
    sem.release()
    sem.close()
    return out[0]


class LimiterAdapter:
    """anyio.CapacityLimiter with the acquire()/release() shape of the others."""

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)

    async def acquire(self) -> bool:
        await self.limiter.acquire()
        return True

    def release(self) -> None:
        self.limiter.release()


async def fan_out_trio(sem: Any, tasks: int) -> float:
    """``fan_out`` on trio: a nursery of tasks that each hold a permit across one yield."""
    import trio

    async def one() -> None:
        await sem.acquire()
        try:
            await trio.sleep(0)
        finally:
            sem.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(one)
    return time.perf_counter() - start


def interleaved_trio(repeats: int, tasks: int, **makers: Any) -> dict[str, float]:
    import trio

    best = dict.fromkeys(makers, float("inf"))
    for _ in range(repeats):
        for name, make in makers.items():
            gc.collect()
            best[name] = min(best[name], trio.run(fan_out_trio, make(), tasks))
    return best


def _trio_semaphore(limit: int) -> Any:
    import trio

    return trio.Semaphore(limit)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


HOLD = 0.05


def _fair_sync(name: str, go: Any, seconds: float, out: Any) -> None:
    sem = ProcessSemaphore(1, name=name)
    go.wait()
    deadline, waits = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        start = time.monotonic()
        sem.acquire()
        waits.append(time.monotonic() - start)
        time.sleep(HOLD)
        sem.release()
    out.put(("sync", waits))


def _fair_async(name: str, go: Any, seconds: float, out: Any, backend: str) -> None:
    async def main() -> list[float]:
        asem = AsyncSemaphore(ProcessSemaphore(1, name=name))
        await anyio.to_thread.run_sync(go.wait)
        deadline, waits = time.monotonic() + seconds, []
        while time.monotonic() < deadline:
            start = time.monotonic()
            await asem.acquire()
            waits.append(time.monotonic() - start)
            await anyio.sleep(HOLD)
            asem.release()
        return waits

    out.put((f"async ({backend})", anyio.run(main, backend=backend)))


def fairness(kinds: list[str], seconds: float) -> list[tuple[str, int, float]]:
    """(kind, turns, p99 wait) per process, all contending for one permit."""
    ctx = multiprocessing.get_context("spawn")
    name = f"pt-bench-fair-{os.getpid()}-{time.monotonic_ns()}"
    sem = ProcessSemaphore(1, name=name)
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_fair_sync, args=(name, go, seconds, out)) if kind == "sync"
        else ctx.Process(target=_fair_async, args=(name, go, seconds, out, kind))
        for kind in kinds
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # imports
    go.set()
    rows = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    sem.unlink()
    return sorted(((kind, len(w), percentile(w, 0.99)) for kind, w in rows), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    n, tasks, trials, idle, big, fair_s = (
        (500, 200, 10, 0.2, 1000, 0.5) if args.quick else (50_000, 2_000, 300, 2.0, 10_000, 5.0)
    )

    async def pairs() -> tuple[float, float, float]:
        fast = AsyncSemaphore(ProcessSemaphore(1, crash_safe=False))
        safe = AsyncSemaphore(ProcessSemaphore(1))
        base = asyncio.Semaphore(1)
        t = [float("inf")] * 3
        for _ in range(3):  # in turn, so that noise hits them alike
            for i, sem in enumerate((fast, safe, base)):
                t[i] = min(t[i], await uncontended(sem, n))
        return t[0], t[1], t[2]

    t_fast, t_safe, t_base = asyncio.run(pairs())

    fast4, safe4 = ProcessSemaphore(4, crash_safe=False), ProcessSemaphore(4)
    best = interleaved(
        7,
        tasks,
        fast=lambda: AsyncSemaphore(fast4),
        safe=lambda: AsyncSemaphore(safe4),
        asyncio=lambda: asyncio.Semaphore(4),
        anyio=lambda: LimiterAdapter(4),
    )
    t_ours, t_ours_safe, t_asyncio = best["fast"], best["safe"], best["asyncio"]
    t_naive = interleaved(1, tasks, naive=lambda: NaiveAdapter(safe4))["naive"]
    t_aiometer = aiometer_time(5, tasks)
    on_trio = interleaved_trio(
        5, tasks, safe=lambda: AsyncSemaphore(safe4), trio=lambda: _trio_semaphore(4)
    )

    lat = handoff_latencies(ProcessSemaphore(1), _awaiting_child, trials, settle=0.005)
    cpu = waiting_cpu(idle)

    wall_big, threads_big = asyncio.run(fan_out(AsyncSemaphore(ProcessSemaphore(4)), big))
    start_threads = threading.active_count()
    mixes = {
        "1 asyncio process vs 4 in blocking acquire()": fairness(
            ["asyncio", "sync", "sync", "sync", "sync"], fair_s
        ),
        "5 async processes, one task each": fairness(
            ["asyncio", "trio", "asyncio", "trio", "asyncio"], fair_s
        ),
    }

    print(HEADER)
    print(row("uncontended pair, crash_safe=False vs asyncio.Semaphore", t_fast * 1e9,
              t_base * 1e9, "ns", "<= 2x"))
    print(row("uncontended pair, crash_safe=True vs asyncio.Semaphore", t_safe * 1e9,
              t_base * 1e9, "ns", "-"))
    print(row(f"{tasks} tasks limit 4, crash_safe=True (default) vs asyncio.Semaphore",
              t_ours_safe * 1e3, t_asyncio * 1e3, "ms", "<= 1.5x"))
    print(row(f"{tasks} tasks limit 4, crash_safe=False vs asyncio.Semaphore", t_ours * 1e3,
              t_asyncio * 1e3, "ms", "<= 1.5x"))
    print(row(f"{tasks} tasks limit 4, crash_safe=True vs anyio.CapacityLimiter",
              t_ours_safe * 1e3, best["anyio"] * 1e3, "ms", "-"))
    print(row(f"{tasks} tasks limit 4 on trio, crash_safe=True vs trio.Semaphore",
              on_trio["safe"] * 1e3, on_trio["trio"] * 1e3, "ms", "-"))
    if t_aiometer is not None:
        print(row(f"{tasks} tasks limit 4, crash_safe=True vs aiometer max_at_once=4 "
                  "(in-process)", t_ours_safe * 1e3, t_aiometer * 1e3, "ms", "-"))
    print(row(f"{tasks} tasks limit 4, crash_safe=True vs naive to_thread adapter",
              t_ours_safe * 1e3, t_naive * 1e3, "ms", "lower is better"))
    print(f"| cross-process handoff to an awaiting task, p50 / p99 | "
          f"{percentile(lat, 0.5) * 1e3:.3f} / {percentile(lat, 0.99) * 1e3:.3f} ms | - | - "
          "| p50 <= 2 ms |")
    print(f"| CPU of a process awaiting a permit held elsewhere ({idle:g} s) | "
          f"{cpu * 100:.2f}% of a core | - | - | <= 1% |")
    print(f"| {big} waiters, limit 4, crash_safe=True: wall time, most threads alive | "
          f"{wall_big:.2f} s, {threads_big} threads (1 at start: {start_threads}) | - | - "
          "| <= start + 2 |")
    print()
    print(f"Fairness: limit 1, {HOLD * 1e3:.0f} ms holds, {fair_s:g} s; the fair share is 20%.")
    print()
    print("| mix | process | turns | share | p99 wait |")
    print("|---|---|---|---|---|")
    for mix, rows in mixes.items():
        total = sum(turns for _, turns, _ in rows)
        for kind, turns, p99 in rows:
            print(f"| {mix} | {kind} | {turns} | {turns / total:.0%} | {p99 * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
