"""ProcessSemaphore speed, as ratios against baselines measured in this same run.

    python benchmarks/bench_semaphore.py [--quick]

1. crash-safe acquire+release vs a raw sysv_ipc semop pair with SEM_UNDO (target <= 1.5x);
2. crash_safe=False acquire+release vs multiprocessing.Semaphore (target <= 3x);
3. cross-process handoff: median time from a release in one process to the woken acquire in
   another, vs multiprocessing.Semaphore.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import sysv_ipc
from _common import HEADER, handoff_latency, per_call, row

from procthrottle import ProcessSemaphore


def pair_loop(sem: Any) -> Any:
    acquire, release = sem.acquire, sem.release

    def loop(n: int) -> None:
        for _ in range(n):
            acquire()
            release()

    return loop


def _waiter(sem: Any, events: Any, stamps: Any, trials: int) -> None:
    go, ready, done = events
    for i in range(trials):
        go.wait()
        go.clear()
        ready.set()
        sem.acquire()
        stamps[i] = time.monotonic()  # CLOCK_MONOTONIC is shared by all processes
        sem.release()
        done.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    n, rounds = (2_000, 20) if args.quick else (200_000, 300)

    safe = ProcessSemaphore(1)
    raw = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600, 1)
    raw.undo, raw.block = True, False
    t_safe = per_call(pair_loop(safe), n)
    t_raw = per_call(pair_loop(raw), n)
    raw.remove()

    fast = ProcessSemaphore(1, crash_safe=False)
    mp_sem = multiprocessing.get_context("fork").Semaphore(1)
    t_fast = per_call(pair_loop(fast), n)
    t_mp = per_call(pair_loop(mp_sem), n)

    lat_safe, lat_fast, lat_mp = (
        handoff_latency(sem, _waiter, rounds, settle=0.002) for sem in (safe, fast, mp_sem)
    )

    print(HEADER)
    print(row("acquire+release, crash_safe=True vs raw sysv_ipc SEM_UNDO", t_safe * 1e9,
              t_raw * 1e9, "ns", "<= 1.5x"))
    print(row("acquire+release, crash_safe=False vs multiprocessing.Semaphore", t_fast * 1e9,
              t_mp * 1e9, "ns", "<= 3x"))
    print(row("cross-process handoff p50, crash_safe=True vs multiprocessing.Semaphore",
              lat_safe * 1e6, lat_mp * 1e6, "µs", "lower is better"))
    print(row("cross-process handoff p50, crash_safe=False vs multiprocessing.Semaphore",
              lat_fast * 1e6, lat_mp * 1e6, "µs", "lower is better"))
    safe.close()
    fast.close()


if __name__ == "__main__":
    main()
