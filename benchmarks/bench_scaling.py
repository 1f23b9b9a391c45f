"""How ThrottledProcessPool scales, against ProcessPoolExecutor in the same run: the curves.

    python benchmarks/bench_scaling.py [--quick] [--json curves.json]

1. workers (1, 2, 4, 8), limit = workers, no-op tasks: throughput and p99 latency
   (submit to result) of each task;
2. task count (10^3 ... 10^6; --quick stops at 10^4), 2 workers: throughput;
3. limit (1, 2, 4) on 4 workers, 2 ms sleeping tasks: throughput, which should grow with the
   limit (PPE has no limit: its figure is the same ceiling in every row).

Each point is the median of three runs. ``--json`` writes the points for the plots.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from _common import HEADER

from procthrottle import ThrottledProcessPool


def noop(x: int) -> int:
    return x


def nap(x: int) -> int:
    time.sleep(0.002)
    return x


def run(make: Callable[[], Any], fn: Callable[[int], int], tasks: int) -> tuple[float, float]:
    """(tasks per second, p99 seconds from submit to result) of one run."""
    with make() as pool:
        pool.submit(fn, 0).result()  # warm up
        latencies: list[float] = []

        def stamp(start: float) -> Callable[[Future[Any]], None]:
            return lambda _: latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        futures = []
        for i in range(tasks):
            future = pool.submit(fn, i)
            future.add_done_callback(stamp(time.perf_counter()))
            futures.append(future)
        wait(futures)
        elapsed = time.perf_counter() - start
    latencies.sort()
    return tasks / elapsed, latencies[int(0.99 * (len(latencies) - 1))]


def median_run(make: Callable[[], Any], fn: Callable[[int], int], tasks: int,
               repeats: int) -> tuple[float, float]:
    runs = [run(make, fn, tasks) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", type=Path, help="write the curves' points here")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    base_tasks = 500 if args.quick else 5_000
    counts = [10**3, 10**4] if args.quick else [10**3, 10**4, 10**5, 10**6]
    curves: dict[str, list[dict[str, float]]] = {"workers": [], "tasks": [], "limit": []}
    print(HEADER)

    for workers in (1, 2, 4, 8):
        ours = median_run(lambda w=workers: ThrottledProcessPool(w, limit=w), noop,
                          base_tasks, repeats)
        ppe = median_run(lambda w=workers: ProcessPoolExecutor(w), noop, base_tasks, repeats)
        curves["workers"].append({"x": workers, "ours": ours[0], "ppe": ppe[0],
                                  "ours_p99": ours[1], "ppe_p99": ppe[1]})
        print(f"| {workers} workers: no-op throughput | {ours[0]:,.0f}/s | PPE {ppe[0]:,.0f}/s | "
              f"{ours[0] / ppe[0]:.2f}x | higher is better |")
        print(f"| {workers} workers: p99 submit-to-result | {ours[1] * 1e3:.1f} ms | "
              f"PPE {ppe[1] * 1e3:.1f} ms | {ours[1] / ppe[1]:.2f}x | lower is better |")

    for tasks in counts:
        reps = 1 if tasks >= 10**5 else repeats
        ours = median_run(lambda: ThrottledProcessPool(2, limit=2), noop, tasks, reps)
        ppe = median_run(lambda: ProcessPoolExecutor(2), noop, tasks, reps)
        curves["tasks"].append({"x": tasks, "ours": ours[0], "ppe": ppe[0]})
        print(f"| {tasks:,} no-op tasks, 2 workers: throughput | {ours[0]:,.0f}/s | "
              f"PPE {ppe[0]:,.0f}/s | {ours[0] / ppe[0]:.2f}x | higher is better |")

    nap_tasks = 200 if args.quick else 1_000
    ppe_nap = median_run(lambda: ProcessPoolExecutor(4), nap, nap_tasks, repeats)
    for limit in (1, 2, 4):
        ours = median_run(lambda n=limit: ThrottledProcessPool(4, limit=n), nap, nap_tasks,
                          repeats)
        curves["limit"].append({"x": limit, "ours": ours[0], "ppe": ppe_nap[0]})
        print(f"| limit {limit} of 4 workers, 2 ms tasks: throughput | {ours[0]:,.0f}/s | "
              f"PPE (no limit) {ppe_nap[0]:,.0f}/s | {ours[0] / ppe_nap[0]:.2f}x | "
              f"~{limit}/4 of PPE |")
    if args.json:
        args.json.write_text(json.dumps(curves, indent=1) + "\n")


if __name__ == "__main__":
    main()
