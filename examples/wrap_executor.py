"""Put the same bound around executors you already have.

Six threads and four processes download "files", but the disk may only take two writers at
once, across both executors: one ThrottledExecutor per executor, one shared ProcessSemaphore.
The process pool starts its workers by "forkserver" (Linux's default from Python 3.14): this
process runs threads by then, and forking a multi-threaded process is deprecated from 3.12.

    python examples/wrap_executor.py
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from procthrottle import ProcessSemaphore, ThrottledExecutor


def write_file(i: int, record: str) -> str:
    start = time.monotonic()
    time.sleep(0.05)  # the "disk write", bounded across both executors
    with open(record, "a") as f:
        f.write(f"{start} {time.monotonic()}\n")
    return f"file {i} written by pid {os.getpid()} thread {threading.get_ident() % 10_000}"


def peak(record: str) -> int:
    events = []
    with open(record) as f:
        for line in f:
            s, e = map(float, line.split())
            events += [(s, 1), (e, -1)]
    current = best = 0
    for _, delta in sorted(events):
        current += delta
        best = max(best, current)
    return best


def main() -> None:
    record = f"/tmp/procthrottle-wrap-{os.getpid()}.log"
    disk = ProcessSemaphore(2)
    forkserver = multiprocessing.get_context("forkserver")
    with (
        ThrottledExecutor(ThreadPoolExecutor(6), disk) as threads,
        ThrottledExecutor(ProcessPoolExecutor(4, mp_context=forkserver), disk) as processes,
    ):
        futures = [threads.submit(write_file, i, record) for i in range(8)]
        futures += [processes.submit(write_file, i, record) for i in range(8, 16)]
        for future in futures:
            print(future.result())
    print(f"16 files written; most writers at once: {peak(record)} (limit {disk.limit})")
    os.unlink(record)


if __name__ == "__main__":
    main()
