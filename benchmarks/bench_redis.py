"""Redis: waiting at scale, fairness, timeouts while the server is stopped, rate utilisation.

    python benchmarks/bench_redis.py [--quick]

Against a real ``redis-server`` started on a free loopback port (skipped without one):

* **Waiting at scale**: 1,000 waiters at limit 1 over 4 processes (sync threads in two, asyncio
  tasks in one, trio tasks in one) queue up behind a holder; the server's command count is
  read while they wait; then each takes the permit once and holds it 5 ms. Release-to-next-
  acquire is measured on CLOCK_MONOTONIC (shared by the processes).
* **Fairness**: 4 processes (sync, sync, asyncio, trio) x 20 waiters loop acquire / hold 5 ms /
  release for a few seconds at limit 1; each process's share of the holds.
* **Timeouts while stopped**: ``acquire(timeout=0.5)`` on a SIGSTOPped server.
* **Rate**: 4 processes loop ``RedisRateLimiter("10000/s").acquire()``, with ``burst=1`` and
  ``burst=10``; admissions per second against the limit, and the most admissions in any 1 s
  window.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ctx = multiprocessing.get_context("fork")
MODES = ("sync", "sync", "asyncio", "trio")


@contextmanager
def redis_url() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait()


HEADER = "| measure | procthrottle | baseline | ratio | target |\n|---|---|---|---|---|"


def _row(name: str, value: str, bound: str, ratio: float, target: str = "<= 1x") -> str:
    """A row against its target bound (the "baseline" column): ratio = result / bound."""
    return f"| {name} | {value} | {bound} | {ratio:.2f}x | {target} |"


def commands(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sum(int(v["calls"]) for v in client.info("commandstats").values())
    finally:
        client.close()


# -- the waiters (one process each) ---------------------------------------------------------
def _waiters(url: str, name: str, mode: str, count: int, hold: float, until: float,
             out: Any) -> None:
    """``count`` waiters; each holds the permit ``hold`` s, once (until=0) or until ``until``."""
    from procthrottle.redis import AsyncRedisSemaphore, RedisSemaphore

    records: list[tuple[float, float, float]] = []  # (asked, acquired, released)

    def once_sync(sem: RedisSemaphore) -> bool:
        asked = time.monotonic()
        sem.acquire()
        got = time.monotonic()
        time.sleep(hold)
        done = time.monotonic()
        sem.release()
        records.append((asked, got, done))
        return done < until

    if mode == "sync":
        sem = RedisSemaphore(url, name, 1, lease=30.0)

        def loop() -> None:
            while once_sync(sem):
                pass

        threads = [threading.Thread(target=loop) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sem.close()
    else:
        import anyio

        asem = AsyncRedisSemaphore(url, name, 1, lease=30.0)

        async def task() -> None:
            while True:
                asked = time.monotonic()
                await asem.acquire()
                got = time.monotonic()
                await anyio.sleep(hold)
                done = time.monotonic()
                asem.release()
                records.append((asked, got, done))
                if done >= until:
                    return

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(task)

        anyio.run(main, backend=mode)
        time.sleep(0.2)  # the last release is made by the background thread
        asem.semaphore.close()  # type: ignore[attr-defined]
    out.put((mode, os.getpid(), records))


def scale(url: str, waiters: int, hold: float) -> list[str]:
    from procthrottle.redis import RedisSemaphore

    name = f"pt-bench-scale-{os.getpid()}"
    holder = RedisSemaphore(url, name, 1, lease=60.0)
    holder.acquire()
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=_waiters, args=(url, name, mode, waiters // 4, hold, 0.0, out))
             for mode in MODES]
    for proc in procs:
        proc.start()
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while client.zcard(holder._keys[2]) < waiters and time.monotonic() < deadline:
        time.sleep(0.05)
    queued = client.zcard(holder._keys[2])
    client.close()
    before, start = commands(url), time.monotonic()
    time.sleep(3.0)
    rate = (commands(url) - before - 1) / (time.monotonic() - start)
    released = time.monotonic()
    holder.release()
    records = [r for _ in procs for r in out.get()[2]]
    for proc in procs:
        proc.join()
    holder.unlink()
    records.sort(key=lambda r: r[1])
    total = max(r[2] for r in records) - released
    gaps = sorted(b[1] - a[2] for a, b in itertools.pairwise(records))
    gaps.insert(0, records[0][1] - released)
    p50 = statistics.median(gaps) * 1e3
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] * 1e3
    ideal = len(records) * hold
    return [
        _row(f"Redis commands/s while {queued} waiters wait (4 processes)", f"{rate:.0f}/s",
             "100/s", rate / 100),
        _row("release to next acquire, p50", f"{p50:.2f} ms", "2 ms", p50 / 2),
        _row("release to next acquire, p99", f"{p99:.2f} ms", "20 ms", p99 / 20),
        _row(f"{len(records)} holds of {hold * 1e3:.0f} ms, one after another", f"{total:.2f} s",
             f"1.3 x {ideal:.1f} s", total / (1.3 * ideal)),
    ]


def fairness(url: str, seconds: float, hold: float) -> list[str]:
    name = f"pt-bench-fair-{os.getpid()}"
    out: Any = ctx.Queue()
    until = time.monotonic() + seconds
    procs = [ctx.Process(target=_waiters, args=(url, name, mode, 20, hold, until, out))
             for mode in MODES]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    counts = [len(r[2]) for r in sorted(results, key=lambda r: MODES.index(r[0]))]
    mean = sum(counts) / len(counts)
    spread = max(abs(c - mean) / mean for c in counts)
    waits = [r[1] - r[0] for res in results for r in res[2]]
    ahead = 4 * 20 - 1
    worst = max(waits)
    bound = ahead * hold * 1.3 + 0.05
    return [
        _row("holds per process (sync, sync, asyncio, trio; 20 waiters each): spread",
             f"{', '.join(map(str, counts))} (±{spread * 100:.0f}%)", "±20%", spread / 0.2),
        _row(f"longest wait ({ahead} waiters ahead x {hold * 1e3:.0f} ms hold)",
             f"{worst * 1e3:.0f} ms", f"{bound * 1e3:.0f} ms", worst / bound),
    ]


def stalled(url: str) -> list[str]:
    import redis

    from procthrottle.redis import RedisRateLimiter, RedisSemaphore

    name = f"pt-bench-stall-{os.getpid()}"
    holder = RedisSemaphore(url, name, 1)
    sem = RedisSemaphore(url, name, 1)
    rate = RedisRateLimiter(url, name + "-rate", 10)
    holder.acquire()
    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        worst = 0.0
        for call in (lambda: sem.acquire(timeout=0.5), lambda: rate.acquire(timeout=0.5)):
            for _ in range(3):
                start = time.monotonic()
                call()
                worst = max(worst, time.monotonic() - start - 0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.5)
    left = client.zcard(holder._keys[0]) + client.zcard(holder._keys[2]) - 1
    holder.release()
    client.close()
    for handle in (holder, sem, rate):
        handle.close()
    return [_row(f"acquire(timeout=0.5) on a stopped server: longest overshoot (left "
                 f"behind: {left})", f"{worst * 1e3:.0f} ms", "100 ms", max(worst, 0.0) / 0.1)]


def _rate_worker(url: str, name: str, burst: int, until: float, out: Any) -> None:
    from procthrottle.redis import RedisRateLimiter

    limiter = RedisRateLimiter(url, name, 10_000, burst=burst)
    times = []
    while time.monotonic() < until:
        limiter.acquire()
        times.append(time.monotonic())
    limiter.close()
    out.put(times)


def rate(url: str, seconds: float, burst: int = 1) -> list[str]:
    name = f"pt-bench-rate-{os.getpid()}-{burst}"
    out: Any = ctx.Queue()
    start = time.monotonic() + 0.5
    until = start + seconds
    procs = [ctx.Process(target=_rate_worker, args=(url, name, burst, until, out))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    times = sorted(t for _ in procs for t in out.get())
    for proc in procs:
        proc.join()
    inside = [t for t in times if start + 0.2 <= t < until]
    span = until - (start + 0.2)
    utilisation = len(inside) / (span * 10_000)
    most, j = 0, 0
    for i, t in enumerate(times):  # most admissions in any 1 s window
        while times[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    label = f"RedisRateLimiter 10,000/s (burst={burst}), 4 processes"
    return [
        _row(f"{label}: utilisation", f"{utilisation:.3f}", "0.97", utilisation / 0.97, ">= 1x"),
        _row(f"{label}: most admissions in any 1 s window", str(most), f"{burst + 10_000:,}",
             most / (burst + 10_000)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    args = parser.parse_args()
    with redis_url() as url:
        if url is None:
            print("redis-server is not installed: nothing to measure", file=sys.stderr)
            print(HEADER)
            for _ in range(4):
                print("| (redis-server missing) | - | - | - | - |")
            return
        print(HEADER)
        rows = scale(url, 100 if args.quick else 1000, 0.005)
        rows += fairness(url, 1.0 if args.quick else 5.0, 0.005)
        rows += stalled(url)
        rows += rate(url, 1.0 if args.quick else 5.0)
        rows += rate(url, 1.0 if args.quick else 5.0, burst=10)
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main()
