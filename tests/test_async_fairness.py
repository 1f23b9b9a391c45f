"""AsyncSemaphore gives fair turns across processes and against blocked threads.

Each contender loops until a common deadline: acquire (timing the wait), hold, release. A fair
semaphore gives each contender about the same number of turns; the old adapter, which waited in
0.1 s slices and re-queued behind everyone each time, gave an async process none at all.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import anyio
import pytest

from helpers import unique_name
from procthrottle import AsyncSemaphore, ProcessSemaphore, throttle

SECONDS = 3.0
HOLD = 0.05


def _sync_contender(name: str, go: Any, results: Any) -> None:
    sem = ProcessSemaphore(1, name=name)
    go.wait()
    deadline = time.monotonic() + SECONDS
    waits = []
    while time.monotonic() < deadline:
        start = time.monotonic()
        sem.acquire()
        waits.append(time.monotonic() - start)
        time.sleep(HOLD)
        sem.release()
    results.put(("sync", os.getpid(), waits))


def _async_contender(name: str, go: Any, results: Any, backend: str) -> None:
    async def main() -> list[float]:
        asem = AsyncSemaphore(ProcessSemaphore(1, name=name))
        await anyio.to_thread.run_sync(go.wait)
        deadline = time.monotonic() + SECONDS
        waits = []
        while time.monotonic() < deadline:
            start = time.monotonic()
            await asem.acquire()
            waits.append(time.monotonic() - start)
            await anyio.sleep(HOLD)
            asem.release()
        return waits

    results.put((f"async-{backend}", os.getpid(), anyio.run(main, backend=backend)))


def run_contenders(kinds: list[str]) -> list[tuple[str, int, list[float]]]:
    """Run one process per kind ("sync", "asyncio", "trio") on one named semaphore."""
    ctx = multiprocessing.get_context("spawn")
    name = unique_name("pt-fair")
    sem = ProcessSemaphore(1, name=name)
    go, results = ctx.Event(), ctx.Queue()
    procs = []
    for kind in kinds:
        if kind == "sync":
            procs.append(ctx.Process(target=_sync_contender, args=(name, go, results)))
        else:
            procs.append(ctx.Process(target=_async_contender, args=(name, go, results, kind)))
    try:
        for p in procs:
            p.start()
        time.sleep(0.5)  # let them import and open the semaphore
        go.set()
        rows = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        sem.unlink()
    return rows


def assert_fair(rows: list[tuple[str, int, list[float]]], kinds: set[str]) -> None:
    total = sum(len(waits) for _, _, waits in rows)
    fair = total / len(rows)
    summary = [(kind, len(waits), round(max(waits), 3)) for kind, _, waits in rows]
    for kind, _, waits in rows:
        if kind in kinds:
            assert len(waits) >= fair / 3, f"{kind} got {len(waits)} of {total} turns: {summary}"
            assert max(waits) < 1.0, f"{kind} waited {max(waits):.2f} s once: {summary}"


@pytest.mark.timeout(120)
def test_async_process_gets_its_turn_against_blocking_processes() -> None:
    rows = run_contenders(["asyncio", "sync", "sync", "sync", "sync"])
    assert_fair(rows, {"async-asyncio"})


@pytest.mark.timeout(120)
def test_five_async_processes_take_turns() -> None:
    rows = run_contenders(["asyncio", "trio", "asyncio", "trio", "asyncio"])
    assert_fair(rows, {"async-asyncio", "async-trio"})


@pytest.mark.timeout(60)
def test_async_task_gets_its_turn_against_threads_of_its_own_process() -> None:
    """4 threads call a sync @throttle function, one task awaits the same semaphore."""
    sem = ProcessSemaphore(1)
    calls: dict[str, list[float]] = {}
    deadline = time.monotonic() + 2.0

    @throttle(sem)
    def blocking_call() -> None:
        time.sleep(0.02)

    def thread_main() -> None:
        waits = calls.setdefault(threading.current_thread().name, [])
        while time.monotonic() < deadline:
            start = time.monotonic()
            blocking_call()
            waits.append(time.monotonic() - start - 0.02)

    async def task_main() -> None:
        asem = AsyncSemaphore(sem)
        waits = calls.setdefault("task", [])
        while time.monotonic() < deadline:
            start = time.monotonic()
            async with asem:
                waits.append(time.monotonic() - start)
                await anyio.sleep(0.02)

    threads = [threading.Thread(target=thread_main, name=f"t{i}") for i in range(4)]
    for t in threads:
        t.start()
    anyio.run(task_main)
    for t in threads:
        t.join(10)
    rows = [(who, 0, waits) for who, waits in calls.items()]
    assert_fair(rows, {"task"})
    assert sem.value == 1
