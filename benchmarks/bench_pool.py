"""ThrottledProcessPool speed, as ratios against ProcessPoolExecutor (and peers, if installed)
measured in this same run, contenders interleaved.

    python benchmarks/bench_pool.py [--quick]

1. submit throughput: 5,000 no-op tasks on 2 workers, limit = workers (target >= 4x PPE);
2. map(chunksize=100) vs PPE map(chunksize=100) (target >= 3x);
3. one submit -> result round trip, median of many (target: p50 <= PPE's);
4. 2,000 x 1 ms tasks (target >= 1.0x PPE's rate);
5. 600 no-ops with two adjacent 1 s tasks among them: batching must not idle a worker or hold
   results (target <= 1.1x PPE's time);
6. section-mode efficiency: 40 tasks x 0.1 s section, limit 2, 4 workers, vs the ideal 2.0 s
   makespan (target >= 0.98);
7. parent RSS growth during a lazy map over 10M items (target < 50 MB);
8. eight 100 MB arguments in flight on 2 workers: time and the parent's peak RSS above its
   start, each pool in a fresh interpreter (target: time <= 1.1x PPE's, peak <= 1.1x PPE's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Any

from procthrottle import ThrottledProcessPool, critical_section


def noop(x: int) -> int:
    return x


async def async_noop(x: int) -> int:
    return x


def section_task(x: int) -> int:
    with critical_section():
        time.sleep(0.1)
    return x


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def _submit(pool: Any, i: int) -> Any:
    return pool.submit(noop, i)


def throughput(
    make: Callable[[], Any], tasks: int, submit: Callable[[Any, int], Any] = _submit
) -> float:
    """Tasks per second: submit all, wait for all (pool start-up not counted)."""
    with make() as pool:
        submit(pool, 0).result()  # warm up the workers
        start = time.perf_counter()
        futures = [submit(pool, i) for i in range(tasks)]
        wait(futures)
        return tasks / (time.perf_counter() - start)


def sleep_ms(ms: float) -> float:
    time.sleep(ms / 1000)
    return ms


def round_trip(make: Callable[[], Any], trials: int) -> float:
    """Median seconds of one submit -> result, the pool idle in between."""
    with make() as pool:
        for i in range(20):
            pool.submit(noop, i).result()
        times = []
        for i in range(trials):
            start = time.perf_counter()
            pool.submit(noop, i).result()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def short_tasks(make: Callable[[], Any], tasks: int) -> float:
    """Tasks per second for 1 ms sleeps."""
    with make() as pool:
        pool.submit(noop, 0).result()
        start = time.perf_counter()
        wait([pool.submit(sleep_ms, 1) for _ in range(tasks)])
        return tasks / (time.perf_counter() - start)


def mixed(make: Callable[[], Any], noops: int) -> float:
    """Seconds for ``noops`` no-ops with two adjacent 1 s tasks in the middle."""
    with make() as pool:
        wait([pool.submit(noop, i) for i in range(200)])  # the pool has seen short tasks
        start = time.perf_counter()
        futures = [pool.submit(noop, i) for i in range(noops // 2)]
        futures += [pool.submit(sleep_ms, 1000), pool.submit(sleep_ms, 1000)]
        futures += [pool.submit(noop, i) for i in range(noops // 2)]
        wait(futures)
        return time.perf_counter() - start


def map_rate(make: Callable[[], Any], items: int, chunksize: int) -> float:
    with make() as pool:
        list(pool.map(noop, range(100), chunksize=chunksize))
        start = time.perf_counter()
        total = sum(pool.map(noop, range(items), chunksize=chunksize))
        assert total == items * (items - 1) // 2
        return items / (time.perf_counter() - start)


def aiomultiprocess_rate(tasks: int) -> float | None:
    try:
        import aiomultiprocess
    except ImportError:
        return None

    async def main() -> float:
        async with aiomultiprocess.Pool(2) as pool:
            await pool.apply(async_noop, (0,))
            start = time.perf_counter()
            await asyncio.gather(*(pool.apply(async_noop, (i,)) for i in range(tasks)))
            return tasks / (time.perf_counter() - start)

    return asyncio.run(main())


def mpire_rate(tasks: int) -> float | None:
    try:
        import mpire
    except ImportError:
        return None
    with mpire.WorkerPool(n_jobs=2) as pool:
        pool.apply_async(noop, (0,)).get()
        start = time.perf_counter()
        results = [pool.apply_async(noop, (i,)) for i in range(tasks)]
        for result in results:
            result.get()
        return tasks / (time.perf_counter() - start)


PEERS = {
    "pebble": "pebble ProcessPool.schedule",
    "loky": "loky reusable executor",
    "aiomultiprocess": "aiomultiprocess Pool.apply",
    "mpire": "mpire WorkerPool.apply_async",
}


def peer_rate(peer: str, tasks: int) -> float | None:
    """One peer's throughput, measured in this process (None: not installed)."""
    try:
        if peer == "pebble":
            import pebble

            return throughput(
                lambda: pebble.ProcessPool(2), tasks, lambda pool, i: pool.schedule(noop, (i,))
            )
        if peer == "loky":
            import loky

            return throughput(lambda: _Reusable(loky.get_reusable_executor(2)), tasks)
    except ImportError:
        return None
    if peer == "mpire":
        return mpire_rate(tasks)
    return aiomultiprocess_rate(tasks)


def peers(tasks: int) -> dict[str, float | None]:
    """Each peer in a child interpreter: some leave threads behind that would keep this
    process from exiting."""
    rates: dict[str, float | None] = {}
    for peer, label in PEERS.items():
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--peer", peer, "--tasks", str(tasks)],
                capture_output=True, text=True, timeout=120, check=True,
            ).stdout.split()
            rates[label] = float(out[-1]) if out and out[-1] != "None" else None
        except (subprocess.SubprocessError, ValueError):
            rates[label] = None
    return rates


class _Reusable:
    """loky's executor is shared: a context manager that does not shut it down."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def __enter__(self) -> Any:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        pass


BIG_ARGUMENTS = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from procthrottle import ThrottledProcessPool

def status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024

if __name__ == "__main__":
    which, mb = sys.argv[1], int(sys.argv[2])
    pool = ThrottledProcessPool(2, 2) if which == "ours" else ProcessPoolExecutor(2)
    with pool:
        pool.submit(len, b"").result()
        data = os.urandom(1 << 20) * mb
        base = status_mb("VmRSS:")
        begin = time.perf_counter()
        futures = [pool.submit(len, data) for _ in range(8)]
        assert all(f.result() == mb << 20 for f in futures)
        print(time.perf_counter() - begin, status_mb("VmHWM:") - base)
"""


def big_arguments(which: str, mb: int) -> tuple[float, float]:
    """Seconds for 8 arguments of ``mb`` MB, and the parent's peak RSS above its start (MB)."""
    out = subprocess.run(
        [sys.executable, "-c", BIG_ARGUMENTS, which, str(mb)],
        capture_output=True, text=True, check=True,
    )
    seconds, peak = out.stdout.split()
    return float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--peer", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=5_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        print(peer_rate(args.peer, args.tasks))
        return
    tasks, items, lazy_items = (500, 5_000, 100_000) if args.quick else (5_000, 200_000, 10**7)

    ours: list[float] = []
    base: list[float] = []
    for _ in range(3):  # in turn, so that noise hits both alike
        ours.append(throughput(lambda: ThrottledProcessPool(2, 2), tasks))
        base.append(throughput(lambda: ProcessPoolExecutor(2), tasks))
    t_ours, t_base = max(ours), max(base)
    m_ours = max(map_rate(lambda: ThrottledProcessPool(2, 2), items, 100) for _ in range(2))
    m_base = max(map_rate(lambda: ProcessPoolExecutor(2), items, 100) for _ in range(2))
    trials = 200 if args.quick else 2000
    r_ours, r_base = [], []
    for _ in range(2):
        r_ours.append(round_trip(lambda: ThrottledProcessPool(2, 2), trials))
        r_base.append(round_trip(lambda: ProcessPoolExecutor(2), trials))
    rt_ours, rt_base = min(r_ours), min(r_base)
    short = 200 if args.quick else 2000
    s_ours, s_base = [], []
    for _ in range(2):
        s_ours.append(short_tasks(lambda: ThrottledProcessPool(2, 2), short))
        s_base.append(short_tasks(lambda: ProcessPoolExecutor(2), short))
    sh_ours, sh_base = max(s_ours), max(s_base)
    x_ours, x_base = [], []
    for _ in range(1 if args.quick else 2):
        x_ours.append(mixed(lambda: ThrottledProcessPool(2, 2), 600))
        x_base.append(mixed(lambda: ProcessPoolExecutor(2), 600))
    mx_ours, mx_base = min(x_ours), min(x_base)

    with ThrottledProcessPool(4, 2, throttle="section") as pool:
        list(pool.map(noop, range(8)))
        start = time.perf_counter()
        list(pool.map(section_task, range(40)))
        makespan = time.perf_counter() - start

    gc.collect()
    before = rss_mb()
    peak = before
    with ThrottledProcessPool(2, 2) as pool:
        results = pool.map(noop, itertools.count(), chunksize=10_000, buffersize=40_000)
        for i, _ in enumerate(itertools.islice(results, lazy_items)):
            if i % 500_000 == 0:
                peak = max(peak, rss_mb())
        peak = max(peak, rss_mb())
        results.close()  # type: ignore[attr-defined]

    big_mb = 20 if args.quick else 100
    b_ours, b_base = [], []
    for _ in range(2):
        b_ours.append(big_arguments("ours", big_mb))
        b_base.append(big_arguments("ppe", big_mb))
    bt_ours, bt_base = min(t for t, _ in b_ours), min(t for t, _ in b_base)
    bm_ours, bm_base = min(m for _, m in b_ours), min(m for _, m in b_base)

    print("| measure | procthrottle | baseline | ratio | target |\n|---|---|---|---|---|")
    print(f"| submit throughput, 2 workers, limit 2, {tasks} no-op tasks | {t_ours:,.0f}/s | "
          f"PPE {t_base:,.0f}/s | {t_ours / t_base:.2f}x | >= 4x |")
    print(f"| map(chunksize=100), {items:,} no-op items | {m_ours:,.0f}/s | PPE {m_base:,.0f}/s | "
          f"{m_ours / m_base:.2f}x | >= 3x |")
    print(f"| submit -> result round trip, p50 of {trials} | {rt_ours * 1e6:.0f} us | "
          f"PPE {rt_base * 1e6:.0f} us | {rt_ours / rt_base:.2f}x | <= 1.0x |")
    print(f"| {short:,} x 1 ms tasks | {sh_ours:,.0f}/s | PPE {sh_base:,.0f}/s | "
          f"{sh_ours / sh_base:.2f}x | >= 1.0x |")
    print(f"| 600 no-ops + two adjacent 1 s tasks | {mx_ours:.2f} s | PPE {mx_base:.2f} s | "
          f"{mx_ours / mx_base:.2f}x | <= 1.1x |")
    print(f"| section mode: 40 x 0.1 s section, limit 2, 4 workers | {makespan:.2f} s | "
          f"ideal 2.00 s | efficiency {2.0 / makespan:.2f} | >= 0.98 |")
    print(f"| parent RSS growth, lazy map over {lazy_items:,} items | {peak - before:.1f} MB | "
          "- | - | < 50 MB |")
    print(f"| 8 x {big_mb} MB arguments, 2 workers: time | {bt_ours:.2f} s | PPE {bt_base:.2f} s | "
          f"{bt_ours / bt_base:.2f}x | <= 1.1x |")
    print(f"| 8 x {big_mb} MB arguments: parent peak RSS growth | {bm_ours:.0f} MB | "
          f"PPE {bm_base:.0f} MB | {bm_ours / bm_base:.2f}x | <= 1.1x |")
    for name, rate in peers(tasks).items():
        shown = "not installed" if rate is None else f"{rate:,.0f}/s"
        ratio = "-" if rate is None else f"{t_ours / rate:.2f}x"
        print(f"| submit throughput vs {name} | {t_ours:,.0f}/s | {shown} | {ratio} | - |")


if __name__ == "__main__":
    main()
