"""Crash recovery: time from a holder's SIGKILL to the next acquisition by a waiting process.

    python benchmarks/bench_recovery.py [--quick]

A child takes the only permit, another child blocks in ``acquire()``, the parent SIGKILLs the
holder and the waiter stamps the moment it gets the permit (CLOCK_MONOTONIC is shared by all
processes). Compared in the same run: ProcessSemaphore (crash-safe: the kernel returns the
permit as the holder dies), ``crash_safe=False`` and ``multiprocessing.Semaphore`` (the permit
is lost: they never recover), and a Redis lease (``RedisSemaphore(lease=1.0)``: the permit
comes back when the lease expires), when ``redis-server`` is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import HEADER

from procthrottle import ProcessSemaphore

NEVER = 2.0  # seconds a waiter waits before we call it "never"
ctx = multiprocessing.get_context("fork")


def _holder(make: Callable[[], Any], held: Any) -> None:
    sem = make()
    sem.acquire()
    held.set()
    time.sleep(60)


def _waiter(make: Callable[[], Any], ready: Any, stamp: Any) -> None:
    sem = make()
    ready.set()
    if sem.acquire(timeout=NEVER + 1):
        stamp.value = time.monotonic()
        sem.release()


def recovery(make: Callable[[], Any], trials: int) -> float | None:
    """Median seconds from SIGKILL to the next acquire; None when it never came."""
    times = []
    for _ in range(trials):
        held, ready, stamp = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
        holder = ctx.Process(target=_holder, args=(make, held))
        holder.start()
        held.wait()
        waiter = ctx.Process(target=_waiter, args=(make, ready, stamp))
        waiter.start()
        ready.wait()
        time.sleep(0.05)  # surely blocked in acquire()
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        waiter.join()
        if not stamp.value:
            return None
        times.append(stamp.value - killed)
    return statistics.median(times)


@contextlib.contextmanager
def redis_url() -> Iterator[str | None]:
    server = shutil.which("redis-server")
    if server is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


def _row(name: str, seconds: float | None, base: float | None) -> str:
    shown = "never" if seconds is None else f"{seconds * 1e3:.2f} ms"
    base_shown = "never" if base is None else f"{base * 1e3:.2f} ms"
    return f"| {name} | {shown} | multiprocessing.Semaphore: {base_shown} | - | lower is better |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer trials (smoke test)")
    args = parser.parse_args()
    trials = 3 if args.quick else 15
    safe = ProcessSemaphore(1)
    fast = ProcessSemaphore(1, crash_safe=False)
    mp_sem = ctx.Semaphore(1)
    base = recovery(lambda: mp_sem, 1)
    print(HEADER)
    print(_row("SIGKILLed holder to next acquire, ProcessSemaphore (crash-safe)",
               recovery(lambda: safe, trials), base))
    print(_row("SIGKILLed holder to next acquire, crash_safe=False", recovery(lambda: fast, 1),
               base))
    with redis_url() as url:
        if url is not None:
            from procthrottle.redis import RedisSemaphore

            name = f"pt-bench-recovery-{os.getpid()}"
            print(_row("SIGKILLed holder to next acquire, RedisSemaphore(lease=1.0)",
                       recovery(lambda: RedisSemaphore(url, name, 1, lease=1.0),
                                max(1, trials // 5)), base))
    safe.close()
    fast.close()


if __name__ == "__main__":
    main()
