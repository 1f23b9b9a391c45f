"""CPU work on every core, a simulated "GPU" section one task at a time.

Each task crunches numbers (CPU, all workers at once), then needs the single GPU for a short
upload. ThrottledProcessPool(throttle="section") runs the tasks freely and lets only one of
them inside critical_section() at a time.

    python examples/gpu_section.py [--tasks 12] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import time

from procthrottle import ThrottledProcessPool, critical_section


def render(frame: int) -> tuple[int, int, float]:
    checksum = sum(i * i for i in range(60_000 + frame))  # CPU work: runs on all workers
    with critical_section():  # the "GPU": one task at a time across the pool
        start = time.monotonic()
        time.sleep(0.05)
        end = time.monotonic()
    return frame, os.getpid(), end - start + 0 * checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    start = time.monotonic()
    with ThrottledProcessPool(args.workers, limit=1, throttle="section") as pool:
        for frame, pid, gpu_time in pool.map(render, range(args.tasks)):
            print(f"frame {frame:3d} rendered by worker {pid}, {gpu_time * 1000:.0f} ms on the GPU")
        stats = pool.stats()
    print(
        f"{stats['completed']} frames in {time.monotonic() - start:.2f}s; "
        f"most tasks on the GPU at once: {stats['max_in_section']} (limit 1)"
    )


if __name__ == "__main__":
    main()
