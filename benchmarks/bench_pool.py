"""ThrottledProcessPool speed, as ratios against ProcessPoolExecutor (and peers, if installed)
measured in this same run.

    python benchmarks/bench_pool.py [--quick]

1. submit throughput: 5,000 no-op tasks on 2 workers, limit = workers (target >= 1.0x PPE);
2. map(chunksize=100) vs PPE map(chunksize=100) (target >= 0.9x);
3. section-mode efficiency: 40 tasks x 0.1 s section, limit 2, 4 workers, vs the ideal 2.0 s
   makespan (target >= 0.95);
4. parent RSS growth during a lazy map over 10M items (target < 50 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import resource
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


def peers(tasks: int) -> dict[str, float | None]:
    rates: dict[str, float | None] = {}
    try:
        import pebble

        rates["pebble ProcessPool.schedule"] = throughput(
            lambda: pebble.ProcessPool(2), tasks, lambda pool, i: pool.schedule(noop, (i,))
        )
    except ImportError:
        rates["pebble ProcessPool.schedule"] = None
    try:
        import loky

        rates["loky reusable executor"] = throughput(
            lambda: _Reusable(loky.get_reusable_executor(2)), tasks
        )
    except ImportError:
        rates["loky reusable executor"] = None
    rates["aiomultiprocess Pool.apply"] = aiomultiprocess_rate(tasks)
    return rates


class _Reusable:
    """loky's executor is shared: a context manager that does not shut it down."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def __enter__(self) -> Any:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    tasks, items, lazy_items = (500, 5_000, 100_000) if args.quick else (5_000, 200_000, 10**7)

    ours: list[float] = []
    base: list[float] = []
    for _ in range(3):  # in turn, so that noise hits both alike
        ours.append(throughput(lambda: ThrottledProcessPool(2, 2), tasks))
        base.append(throughput(lambda: ProcessPoolExecutor(2), tasks))
    t_ours, t_base = max(ours), max(base)
    m_ours = max(map_rate(lambda: ThrottledProcessPool(2, 2), items, 100) for _ in range(2))
    m_base = max(map_rate(lambda: ProcessPoolExecutor(2), items, 100) for _ in range(2))

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

    print("| measure | procthrottle | baseline | ratio | target |\n|---|---|---|---|---|")
    print(f"| submit throughput, 2 workers, limit 2, {tasks} no-op tasks | {t_ours:,.0f}/s | "
          f"PPE {t_base:,.0f}/s | {t_ours / t_base:.2f}x | >= 1.0x |")
    print(f"| map(chunksize=100), {items:,} no-op items | {m_ours:,.0f}/s | PPE {m_base:,.0f}/s | "
          f"{m_ours / m_base:.2f}x | >= 0.9x |")
    print(f"| section mode: 40 x 0.1 s section, limit 2, 4 workers | {makespan:.2f} s | "
          f"ideal 2.00 s | efficiency {2.0 / makespan:.2f} | >= 0.95 |")
    print(f"| parent RSS growth, lazy map over {lazy_items:,} items | {peak - before:.1f} MB | "
          "- | - | < 50 MB |")
    for name, rate in peers(tasks).items():
        shown = "not installed" if rate is None else f"{rate:,.0f}/s"
        ratio = "-" if rate is None else f"{t_ours / rate:.2f}x"
        print(f"| submit throughput vs {name} | {t_ours:,.0f}/s | {shown} | {ratio} | - |")


if __name__ == "__main__":
    main()
