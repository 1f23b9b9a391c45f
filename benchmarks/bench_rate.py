"""RateLimiter against the other rate limiters for Python, all measured in this same run.

    pip install -e '.[bench]'      # aiolimiter, pyrate-limiter, limits, throttled-py, redis
    python benchmarks/bench_rate.py [--quick]

Starts its own redis-server on a loopback port (for the Redis peers), then measures:

1. the cost of one uncontended admission (the limit far above the request rate), sync: the
   procthrottle `RateLimiter` against pyrate-limiter (in-memory, multiprocess, SQLite and
   Redis buckets), limits (memory and Redis storage, moving and fixed window) and
   throttled-py (memory and Redis, GCRA); async: `AsyncRateLimiter` against aiolimiter
   (in-process only, the floor; target <= 2.5x) and the peers' asyncio faces;
2. 4 processes, each acquiring in a loop for a few seconds against one 10,000/s limit, for
   every peer that works across processes: utilisation (admitted / 10,000 per second), the
   most admitted in any 1 s window against the limit (accuracy), and the share of each
   process (fairness: equal demand, so equal shares are the target);
3. the same for procthrottle with async waiters: 4 processes of asyncio tasks, and a mix of
   threads, asyncio and trio;
4. the CPU a process burns while it waits for its slot (target: ~0, it sleeps).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from typing import Any

import anyio
from _common import per_call
from _rate_peers import PEERS, Peer, Setup, close, folder, redis_server

from procthrottle import AsyncRateLimiter, RateLimiter

FAST = 10**7  # acquisitions per second: never the bottleneck
RATE = 10_000.0
PROCESSES = 4
#: (peer, utilisation, most in any 1 s / limit, worst deviation from an equal share)
FIGURE: list[tuple[str, float, float, float]] = []


# -- 1. cost ---------------------------------------------------------------------------------
def _cost(peer: Peer, setup: Setup, calls: int) -> float:
    peer.prepare(setup)
    acquire = peer.make(setup)

    def loop(k: int) -> None:
        for _ in range(k):
            acquire()

    return per_call(loop, calls, repeats=3)


def sync_costs(n: int, redis_url: str | None, tmp: str) -> list[str]:
    ours_setup = Setup(FAST, redis_url, tmp)
    ours = _cost(PEERS[0], ours_setup, n)
    close(ours_setup)
    rows = []
    for peer in PEERS[1:]:
        if (why := peer.missing(redis_url)) is not None:
            rows.append(f"| sync: {peer.name} | | {why} | | |")
            continue
        setup = Setup(FAST, redis_url, tmp)
        calls = n if not peer.cross_process else max(200, n // 100)
        try:
            base = _cost(peer, setup, calls)
        except Exception as exc:  # a peer's failure is a row, not the end of the run
            rows.append(f"| sync: {peer.name} | | failed: "
                        f"{type(exc).__name__} | | |")  # fmt: skip
            continue
        where = "" if peer.cross_process else " [1 process]"
        rows.append(
            f"| sync: RateLimiter vs {peer.name}{where} "
            f"| {ours * 1e6:.2f} µs | {base * 1e6:.2f} µs | {ours / base:.2f}x | |"
        )
    return rows


async def _async_loop(acquire: Any, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            await acquire()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def async_costs(n: int) -> list[str]:
    limiter = RateLimiter(FAST)
    ours = asyncio.run(_async_loop(AsyncRateLimiter(limiter).acquire, n))
    ours_trio = anyio.run(_async_loop, AsyncRateLimiter(limiter).acquire, n, backend="trio")
    limiter.close()
    rows = [f"| async: AsyncRateLimiter (asyncio) | {ours * 1e6:.2f} µs | | | |",
            f"| async: AsyncRateLimiter (trio) | {ours_trio * 1e6:.2f} µs | | | |"]  # fmt: skip
    for label, target, make, calls in [
        ("aiolimiter [1 process]", "<= 2.5x", _aiolimiter, n),
        ("pyrate-limiter in-memory [1 process]", "", _pyrate_async, max(200, n // 10)),
        ("throttled-py memory [1 process]", "", _throttled_async, max(200, n // 10)),
    ]:
        try:
            acquire = make()
        except ImportError:
            rows.append(f"| async: {label} | | not installed | | |")
            continue
        base = asyncio.run(_async_loop(acquire, calls))
        rows.append(
            f"| async: AsyncRateLimiter vs {label} "
            f"| {ours * 1e6:.2f} µs | {base * 1e6:.2f} µs | {ours / base:.2f}x | {target} |"
        )
    return rows


def _aiolimiter() -> Any:
    from aiolimiter import AsyncLimiter

    return AsyncLimiter(FAST, 1).acquire


def _pyrate_async() -> Any:
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    pyrate = Limiter(InMemoryBucket([Rate(FAST, Duration.SECOND)]))

    async def acquire() -> None:
        await pyrate.try_acquire_async("bench")

    return acquire


def _throttled_async() -> Any:
    from throttled.asyncio import MemoryStore, Throttled, per_sec

    quota = per_sec(FAST, burst=1)
    return Throttled(key="bench", using="gcra", quota=quota, store=MemoryStore()).limit


# -- 2, 3. four processes against one limit --------------------------------------------------
def _worker(peer: Peer | None, kind: str, setup: Setup, t0: float, end: float, out: Any) -> None:
    """Acquire in a loop until ``end``; send the admission times."""
    times: list[float] = []
    try:
        if peer is not None:
            acquire = peer.make(setup)
            while time.monotonic() < t0:
                time.sleep(max(0.0, t0 - time.monotonic()))
            while time.monotonic() < end:
                acquire()
                times.append(time.monotonic())
        else:
            _procthrottle_waiters(kind, setup.shared["ours"], t0, end, times)
    finally:
        out.put(times)


def _procthrottle_waiters(
    kind: str, limiter: RateLimiter, t0: float, end: float, times: list[float]
) -> None:
    """10 threads, asyncio or trio tasks of one process, acquiring until ``end``."""
    if kind == "threads":
        import threading

        def loop() -> None:
            while (left := end - time.monotonic()) > 0:
                if limiter.acquire(timeout=left):
                    times.append(time.monotonic())

        time.sleep(max(0.0, t0 - time.monotonic()))
        threads = [threading.Thread(target=loop) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return

    async def task(shared: AsyncRateLimiter) -> None:
        while (left := end - time.monotonic()) > 0:
            if await shared.acquire(timeout=left):
                times.append(time.monotonic())

    async def main() -> None:
        shared = AsyncRateLimiter(limiter)
        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(task, shared)

    anyio.run(main, backend=kind)


def _most_in_window(times: list[float], width: float) -> int:
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] < t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def shared_run(label: str, peer: Peer | None, kinds: list[str], setup: Setup,
               seconds: float) -> str:  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    if peer is not None:
        try:
            peer.prepare(setup)
        except Exception as exc:  # a peer's failure is a row, not the end of the run
            return f"| {label} | failed: {type(exc).__name__}: {exc} | | | |"
    else:
        setup.shared["ours"] = RateLimiter(setup.rate)
    t0 = time.monotonic() + 1.0
    end = t0 + seconds
    procs = [ctx.Process(target=_worker, args=(peer, kind, setup, t0, end, out)) for kind in kinds]
    for proc in procs:
        proc.start()
    results: list[list[float]] = []
    try:
        for _ in procs:
            results.append(out.get(timeout=seconds + 60))
    except Exception:
        return f"| {label} | did not finish within {seconds + 60:g} s | | | |"
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        close(setup)
    inside = [[t for t in times if t0 <= t < end] for times in results]
    total = sum(len(times) for times in inside)
    merged = sorted(t for times in inside for t in times)
    most = _most_in_window(merged, 1.0) if merged else 0
    shares = [len(times) for times in inside]  # in the order of `kinds`
    equal = total / len(shares)
    spread = max(abs(share - equal) for share in shares) / equal if equal else 0.0
    share_text = " / ".join(f"{share / total:.0%}" for share in shares) if total else "-"
    FIGURE.append((label, total / (setup.rate * seconds), most / setup.rate, spread))
    return (
        f"| {label} | {total / (setup.rate * seconds):.3f} | {most / setup.rate:.3f} "
        f"| {share_text} | {spread:.0%} |"
    )


def shared_runs(seconds: float, redis_url: str | None, tmp: str) -> list[str]:
    rows = [
        "",
        f"| {PROCESSES} processes (1 thread each unless said), one limit of {RATE:,.0f}/s, "
        f"{seconds:g} s | utilisation | most in any 1 s / limit | shares (equal demand, in "
        f"process order) | worst deviation from equal |",
        "|---|---|---|---|---|",
    ]
    for peer in PEERS:
        if not peer.cross_process:
            continue
        if (why := peer.missing(redis_url)) is not None:
            rows.append(f"| {peer.name} | {why} | | | |")
            continue
        label = peer.name
        rows.append(shared_run(label, peer, ["sync"] * PROCESSES, Setup(RATE, redis_url, tmp),
                               seconds))  # fmt: skip
    for label, kinds in [
        ("procthrottle AsyncRateLimiter, 10 asyncio tasks each", ["asyncio"] * PROCESSES),
        ("procthrottle, 10 threads / asyncio / trio / asyncio tasks",
         ["threads", "asyncio", "trio", "asyncio"]),
    ]:  # fmt: skip
        rows.append(shared_run(label, None, kinds, Setup(RATE, redis_url, tmp), seconds))
    return rows


# -- 4. CPU while waiting --------------------------------------------------------------------
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args()
    n = 2_000 if args.quick else 50_000
    seconds = 1.0 if args.quick else 4.0
    with redis_server() as redis_url, folder() as tmp:
        print("| measure | procthrottle | baseline | ratio | target |\n|---|---|---|---|---|")
        print("\n".join(async_costs(n) + sync_costs(n, redis_url, tmp)), flush=True)
        print("\n".join(shared_runs(seconds, redis_url, tmp)), flush=True)
    print("\n| measure | result | compared | target |\n|---|---|---|---|")
    print("\n".join(cpu_while_waiting(0.5 if args.quick else 2.0)))
    if os.environ.get("BENCH_IMG"):  # set by `python -m benchmarks`
        plot_shared(os.path.join(os.environ["BENCH_IMG"], "bench-rate-processes.png"), seconds)


def plot_shared(path: str, seconds: float) -> None:
    """Utilisation, accuracy and fairness of every peer across processes, side by side."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label if len(label) < 48 else label[:45] + "..." for label, *_ in FIGURE]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.42 * len(FIGURE) + 1.6), sharey=True)
    for ax, column, title, ideal in [
        (axes[0], 1, "utilisation (admitted / limit x time)", 1.0),
        (axes[1], 2, "most in any 1 s / limit", 1.0),
        (axes[2], 3, "worst deviation from an equal share", 0.0),
    ]:
        values = [row[column] for row in FIGURE]
        colors = ["#3b7dd8" if row[0].startswith("procthrottle") else "#999999" for row in FIGURE]
        ax.barh(range(len(values)), values, color=colors)
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:.2f}", va="center", fontsize=7)
        ax.axvline(ideal, color="#d83b3b", lw=1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{PROCESSES} processes, one limit of {RATE:,.0f}/s, {seconds:g} s "
                 "(red: ideal; blue: procthrottle)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
