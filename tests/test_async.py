"""AsyncSemaphore and @throttle on asyncio and trio (anyio's pytest plugin), real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

import throttled_funcs
from helpers import PYTHON, max_overlap, python_env, read_intervals, unique_name
from procthrottle import AsyncSemaphore, ProcessSemaphore, throttle

pytestmark = pytest.mark.anyio


def hold_in_other_process(
    name: str, limit: int, permits: int, seconds: float
) -> subprocess.Popen[str]:
    """Start an unrelated process that holds ``permits`` of a named semaphore for a while."""
    script = textwrap.dedent(
        f"""
        import time
        from procthrottle import ProcessSemaphore
        sem = ProcessSemaphore({limit}, name={name!r})
        for _ in range({permits}):
            assert sem.acquire(timeout=10)
        print("held", flush=True)
        time.sleep({seconds})
        sem.release({permits})
        """
    )
    child = subprocess.Popen(
        [PYTHON, "-c", script], env=python_env(), stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    return child


def process_semaphore(sem: AsyncSemaphore) -> ProcessSemaphore:
    inner = sem.semaphore
    assert isinstance(inner, ProcessSemaphore)
    return inner


def finish(child: subprocess.Popen[str]) -> None:
    child.wait(30)
    assert child.stdout is not None
    child.stdout.close()
    assert child.returncode == 0


def waiter_threads() -> int:
    """procthrottle's waiter threads alive (not trio's or anyio's worker threads)."""
    return sum(t.name == "procthrottle-waiter" for t in threading.enumerate())


async def wait_for_waiter_thread_exit(baseline: int) -> None:
    with anyio.fail_after(5):
        while waiter_threads() > baseline:
            await anyio.sleep(0.01)


async def test_acquire_release_timeout_and_properties() -> None:
    sem = AsyncSemaphore(2)
    assert isinstance(sem.semaphore, ProcessSemaphore)
    assert (sem.limit, sem.value) == (2, 2)
    assert await sem.acquire() is True
    async with sem:
        assert sem.value == 0
        start = time.monotonic()
        assert await sem.acquire(timeout=0.2) is False
        assert 0.18 <= time.monotonic() - start < 2
        assert await sem.acquire(timeout=0) is False
        assert await sem.acquire(timeout=-1) is False
    assert sem.value == 1
    sem.release()
    assert sem.value == 2
    with pytest.raises(ValueError, match="limit=2"):
        sem.release()
    assert sem.value == 2
    assert await sem.acquire(timeout=0) is True
    sem.release()
    process_semaphore(sem).close()


@pytest.mark.parametrize("kind", ["multiprocessing", "threading", "posix"])
async def test_wraps_other_semaphores(kind: str) -> None:
    makers: dict[str, Callable[[], Any]] = {
        "multiprocessing": lambda: multiprocessing.get_context("fork").Semaphore(2),
        "threading": lambda: threading.Semaphore(2),
        "posix": lambda: ProcessSemaphore(2, crash_safe=False),
    }
    inner = makers[kind]()
    sem = AsyncSemaphore(inner)
    assert sem.semaphore is inner
    assert await sem.acquire()
    assert await sem.acquire()
    assert sem.value == 0
    assert await sem.acquire(timeout=0.05) is False

    async def release_soon() -> None:
        await anyio.sleep(0.05)
        sem.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_soon)
        assert await sem.acquire(timeout=5)  # granted through the waiter thread
    sem.release()
    sem.release()
    assert sem.value == 2


@pytest.mark.parametrize("bad", ["3", 2.5, None, True, object()])
async def test_bad_semaphore_argument(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        AsyncSemaphore(bad)  # type: ignore[arg-type]


async def test_bad_timeout_keeps_count() -> None:
    sem = AsyncSemaphore(1)
    with pytest.raises(TypeError, match="timeout"):
        await sem.acquire(timeout="1")  # type: ignore[arg-type]
    assert sem.value == 1
    assert await sem.acquire(timeout=0)


async def test_waiters_of_one_process_are_served_first_come_first_served() -> None:
    sem = AsyncSemaphore(1)
    order: list[int] = []

    async def user(i: int) -> None:
        async with sem:
            order.append(i)
            await anyio.sleep(0.001)

    assert await sem.acquire()
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(user, i)
            await anyio.sleep(0.001)  # they queue in this order
        sem.release()
    assert order == list(range(20))
    assert sem.value == 1


def test_one_semaphore_shared_by_loops_in_several_threads() -> None:
    """asyncio and trio loops in four threads hand slots to each other across threads."""
    sem = AsyncSemaphore(2)
    lock = threading.Lock()
    current = peak = done = 0

    async def user() -> None:
        nonlocal current, peak, done
        async with sem:
            with lock:
                current += 1
                peak = max(peak, current)
            await anyio.sleep(0.0005)
            with lock:
                current -= 1
                done += 1

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(user)

    threads = [
        threading.Thread(target=anyio.run, args=(main,), kwargs={"backend": backend})
        for backend in ("asyncio", "trio", "asyncio", "trio")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert done == 800
    assert peak == 2
    assert sem.value == 2


async def test_loop_keeps_ticking_while_waiting_for_another_process() -> None:
    name = unique_name()
    sem = AsyncSemaphore(ProcessSemaphore(1, name=name))
    child = hold_in_other_process(name, 1, 1, 0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        start = time.monotonic()
        assert await sem.acquire(timeout=10)
        waited = time.monotonic() - start
        tg.cancel_scope.cancel()
    finish(child)
    assert waited > 0.3
    assert ticks >= 15  # a blocked loop would have ticked at most once
    sem.release()
    process_semaphore(sem).unlink()


async def test_10000_tasks_limit_4_peak_and_threads() -> None:
    name = unique_name()
    sem = AsyncSemaphore(ProcessSemaphore(4, name=name))
    baseline = waiter_threads()
    child = hold_in_other_process(name, 4, 3, 0.3)  # start under cross-process contention
    current = peak = done = max_threads = 0

    async def task() -> None:
        nonlocal current, peak, done, max_threads
        async with sem:
            current += 1
            peak = max(peak, current)
            max_threads = max(max_threads, waiter_threads())
            await anyio.sleep(0)
            current -= 1
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(10_000):
            tg.start_soon(task)
    finish(child)
    assert done == 10_000
    assert peak == 4
    assert max_threads - baseline <= 1  # one waiter thread, however many tasks wait
    assert sem.value == 4
    await wait_for_waiter_thread_exit(baseline)
    process_semaphore(sem).unlink()


async def test_cancellation_storm_leaks_nothing() -> None:
    sem = AsyncSemaphore(2)
    rng = random.Random(7)
    baseline = waiter_threads()
    held = 0

    async def user() -> None:
        nonlocal held
        async with sem:
            held += 1
            try:
                assert held <= 2
                await anyio.sleep(rng.random() * 0.002)
            finally:
                held -= 1

    for _ in range(20):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(user)
                await anyio.sleep(rng.random() * 0.01)
                scope.cancel()
        assert sem.value == 2
        assert len(sem._core.slots) == 2  # every gate slot came back
        assert not sem._core.held  # and no permit is counted as held
    assert held == 0
    await wait_for_waiter_thread_exit(baseline)


async def test_cancellation_while_other_process_releases() -> None:
    """Waiters served by the waiter thread, cancelled while the permits arrive."""
    name = unique_name()
    sem = AsyncSemaphore(ProcessSemaphore(2, name=name))
    baseline = waiter_threads()
    for round_ in range(5):
        child = hold_in_other_process(name, 2, 2, 0.05 + round_ * 0.01)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(300):
                    tg.start_soon(_hold_briefly, sem)
                await anyio.sleep(0.05 + round_ * 0.01)
                scope.cancel()
        finish(child)
        assert sem.value == 2
    await wait_for_waiter_thread_exit(baseline)
    process_semaphore(sem).unlink()


async def _hold_briefly(sem: AsyncSemaphore) -> None:
    async with sem:
        await anyio.sleep(0.0005)


async def test_timeouts_storm_leaks_nothing() -> None:
    sem = AsyncSemaphore(2)
    results: list[bool] = []

    async def user(timeout: float) -> None:
        ok = await sem.acquire(timeout=timeout)
        results.append(ok)
        if ok:
            await anyio.sleep(0.001)
            sem.release()

    rng = random.Random(3)
    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(user, rng.random() * 0.05)
    assert len(results) == 500
    assert True in results
    assert False in results
    assert sem.value == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_plain_asyncio_cancel_wait_for_and_timeout() -> None:
    sem = AsyncSemaphore(1)
    for _ in range(10):
        assert await sem.acquire()
        tasks = [asyncio.ensure_future(sem.acquire()) for _ in range(100)]
        await asyncio.sleep(0)
        for t in tasks[::2]:
            t.cancel()
        sem.release()  # a permit flows through the queue while half of it is cancelled
        await asyncio.sleep(0.01)
        for t in tasks[1::2]:
            t.cancel()
        outcome = await asyncio.gather(*tasks, return_exceptions=True)
        winners = [r for r in outcome if r is True]
        for _ in winners:
            sem.release()
        assert sem.value == 1
        assert await sem.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sem.acquire(), 0.01)
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await sem.acquire()
        sem.release()
        assert sem.value == 1


def _async_worker(sem: ProcessSemaphore, path: str, tasks: int) -> None:
    async def main() -> None:
        asem = AsyncSemaphore(sem)

        async def one() -> None:
            async with asem:
                start = time.monotonic()
                await anyio.sleep(0.02)
                with open(path, "a") as f:
                    f.write(f"{os.getpid()} {start} {time.monotonic()}\n")

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(one)

    anyio.run(main)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.timeout(60)
async def test_two_processes_with_event_loops_share_the_limit(tmp_path: Path) -> None:
    sem = ProcessSemaphore(3)
    record = tmp_path / "intervals"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_async_worker, args=(sem, str(record), 20)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        await anyio.to_thread.run_sync(p.join, 30)
        assert p.exitcode == 0
    intervals = read_intervals(record)
    assert len(intervals) == 40
    assert max_overlap(intervals) == 3
    assert sem.value == 3
    sem.close()


# -- throttle ------------------------------------------------------------------------------


async def test_throttle_async_function_and_metadata() -> None:
    current = peak = 0

    @throttle(3)
    async def fetch(i: int) -> int:
        """Fetch item i."""
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await anyio.sleep(0.001)
        current -= 1
        return i * 2

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch item i."
    assert fetch.__wrapped__ is not None  # type: ignore[attr-defined]
    results: list[int] = []

    async def run(i: int) -> None:
        results.append(await fetch(i))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(run, i)
    assert sorted(results) == [i * 2 for i in range(200)]
    assert peak == 3


async def test_throttle_timeout_raises_timeout_error() -> None:
    sem = ProcessSemaphore(1)

    @throttle(sem, timeout=0.05)
    async def slow() -> None:
        pass

    @throttle(sem, timeout=0.05)
    def slow_sync() -> None:
        pass

    assert sem.acquire()
    with pytest.raises(TimeoutError, match="slow"):
        await slow()
    with pytest.raises(TimeoutError, match="slow_sync"):
        slow_sync()
    sem.release()
    await slow()
    slow_sync()
    assert sem.value == 1
    sem.close()


async def test_throttle_with_async_semaphore_and_methods() -> None:
    shared = AsyncSemaphore(2)

    class Client:
        def __init__(self) -> None:
            self.current = self.peak = 0

        @throttle(shared)
        async def get(self, i: int) -> int:
            self.current += 1
            self.peak = max(self.peak, self.current)
            await anyio.sleep(0.001)
            self.current -= 1
            return i

        @throttle(shared)
        def get_sync(self, i: int) -> int:
            return -i

    client = Client()
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(client.get, i)
    assert client.peak == 2
    assert client.get_sync(3) == -3
    assert Client.get.__name__ == "get"
    assert shared.value == 2


def test_throttle_sync_function_in_threads() -> None:
    current = peak = 0
    lock = threading.Lock()

    @throttle(2)
    def work() -> None:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.01)
        with lock:
            current -= 1

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


@pytest.mark.parametrize("bad", ["2", 0, True, None, 1.5])
def test_throttle_bad_arguments(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        throttle(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        throttle(1, timeout="x")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_throttled_module_function_in_a_process_pool(method: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    assert pickle.loads(pickle.dumps(throttled_funcs.bounded)) is throttled_funcs.bounded
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        pids = set(pool.map(throttled_funcs.bounded, [str(record)] * 12))
    assert len(pids) >= 2
    intervals = read_intervals(record)
    assert len(intervals) == 12
    assert max_overlap(intervals) == 2
    assert throttled_funcs.SEMAPHORE.value == 2
