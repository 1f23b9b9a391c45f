"""The classic semaphore example, with a crash-safe ProcessSemaphore.

Ten processes start at once; a limit of 2 lets only two of them into the critical section at a
time. Each prints the value it saw after a random sleep. One of them is killed with SIGKILL while
it holds a permit; with multiprocessing.Semaphore that permit would be gone for good, here the
kernel gives it back and the others finish.

    python examples/seed_semaphore.py [--processes 10] [--limit 2] [--start-method spawn]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import time

from procthrottle import ProcessSemaphore


def worker(i: int, sem: ProcessSemaphore, record: str | None, doomed: bool) -> None:
    with sem:
        start = time.monotonic()
        if doomed:
            print(f"Process {i} got the semaphore and is killed with SIGKILL while holding it")
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(random.uniform(0.05, 0.2))
        print(f"Process {i} got value {sem.value}", flush=True)
        end = time.monotonic()
    if record:
        with open(record, "a") as f:  # one short line per holder: appends do not interleave
            f.write(f"{i} {start} {end}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--start-method", default="spawn", choices=("fork", "spawn", "forkserver"))
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a holder")
    parser.add_argument("--record", help="append 'i start end' per holder to this file")
    args = parser.parse_args()

    ctx = multiprocessing.get_context(args.start_method)
    sem = ProcessSemaphore(args.limit)
    doomed = -1 if args.no_kill else args.processes // 2
    procs = [
        ctx.Process(target=worker, args=(i, sem, args.record, i == doomed))
        for i in range(args.processes)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes = sorted({p.exitcode for p in procs if p.exitcode})
    print(
        f"{args.processes} processes, limit {args.limit}, {args.start_method}: done in "
        f"{time.monotonic() - t0:.2f}s; exit codes other than 0: {codes or 'none'}; "
        f"free permits now: {sem.value}/{sem.limit}"
    )


if __name__ == "__main__":
    main()
