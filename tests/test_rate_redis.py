"""RedisRateLimiter and AsyncRedisRateLimiter against a real redis-server."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import pytest

import test_rate_tasks as tasks
from helpers import unique_name
from procthrottle import SemaphoreClosedError, ThrottledExecutor

redis = pytest.importorskip("redis")
from procthrottle.redis import (  # noqa: E402
    AsyncRedisRateLimiter,
    RedisRateLimiter,
    RedisUnavailableError,
)
from redis_server import free_port  # noqa: E402
from test_rate_processes import max_in_window  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def name() -> str:
    return unique_name("pt-redis-rate")


def test_burst_rate_timeout_and_properties(url: str, name: str) -> None:
    limiter = RedisRateLimiter(url, name, "20/s", burst=3)
    assert (limiter.rate, limiter.per, limiter.burst, limiter.name) == (20.0, 1.0, 3, name)
    start = time.monotonic()
    for _ in range(3):
        assert limiter.acquire(block=False)
    assert not limiter.acquire(block=False)
    assert not limiter.acquire(timeout=0.02)
    times = []
    for _ in range(4):
        with limiter:
            times.append(time.monotonic())
    assert times[-1] - start == pytest.approx(0.2, abs=0.06)
    assert min(b - a for a, b in itertools.pairwise(times)) > 0.04
    with pytest.raises(ValueError, match="more than burst"):
        limiter.acquire(4)
    assert "redis://127.0.0.1" in repr(limiter)
    limiter.unlink()
    with pytest.raises(SemaphoreClosedError):
        limiter.acquire()


def test_weighted_two_rates_and_mismatch(url: str, name: str) -> None:
    limiter = RedisRateLimiter(url, name, 100, burst=4, extra=[(10, 1.0)])
    start = time.monotonic()
    assert limiter.acquire(4, block=False)
    assert limiter.acquire(2, timeout=1)
    assert time.monotonic() - start == pytest.approx(0.2, abs=0.06)
    with pytest.raises(ValueError, match=r"already exists in Redis with .*burst=4"):
        RedisRateLimiter(url, name, 100, burst=5)
    limiter.unlink()


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((None, "x", 1), {}, TypeError),
        (("URL", "bad name", 1), {}, ValueError),
        (("URL", None, 1), {}, TypeError),
        (("URL", "x", 0), {}, ValueError),
        (("URL", "x", True), {}, TypeError),
        (("URL", "x", "often"), {}, ValueError),
        (("URL", "x", 1), {"burst": 0}, ValueError),
    ],
)
def test_bad_arguments(
    url: str, args: tuple[object, ...], kwargs: dict[str, object], exc: type
) -> None:
    args = tuple(url if a == "URL" else a for a in args)
    with pytest.raises(exc):
        RedisRateLimiter(*args, **kwargs)  # type: ignore[arg-type]


def test_unreachable_redis() -> None:
    with pytest.raises(RedisUnavailableError, match="cannot reach Redis"):
        RedisRateLimiter(f"redis://:secret@127.0.0.1:{free_port()}/0", "x", 10)


def test_other_rates_are_refused_when_made_not_when_used(url: str, name: str) -> None:
    first = RedisRateLimiter(url, name, "10/s")  # nothing acquired yet: its rates are stored
    with pytest.raises(ValueError, match="already exists in Redis"):
        RedisRateLimiter(url, name, "1/min")
    assert first.acquire(block=False)
    first.unlink()


@pytest.mark.anyio
async def test_async_limiter_is_made_without_calling_redis() -> None:
    """Made on the event loop's thread, it must not talk to Redis there: with no server at
    all, making it succeeds at once, and only the first acquisition says Redis is missing."""
    start = time.monotonic()
    limiter = AsyncRedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", "x", 10)
    assert time.monotonic() - start < 0.5
    with pytest.raises(RedisUnavailableError):
        await limiter.acquire()
    await limiter.aclose()


def test_interrupted_wait_gives_the_slot_back(url: str, name: str) -> None:
    limiter = RedisRateLimiter(url, name, 5)
    start = time.monotonic()
    assert limiter.acquire()
    reservation = limiter._reserve(1, None)  # the slot at +200 ms
    assert reservation is not None
    assert limiter._give_back(reservation)
    assert not limiter._give_back(reservation)  # only once
    assert limiter.acquire(timeout=0.3)
    assert time.monotonic() - start < 0.3  # that same slot, not the one at +400 ms
    limiter.unlink()


@pytest.mark.timeout(90)
def test_bound_across_processes(url: str, name: str) -> None:
    limiter = RedisRateLimiter(url, name, 50, burst=2)
    ctx = multiprocessing.get_context("spawn")
    copy = pickle.loads(pickle.dumps(limiter))
    assert copy.name == name
    copy.close()
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        list(pool.map(time.sleep, [0.01] * 3))  # workers up
        futures = [pool.submit(tasks.acquire_times, limiter, 10) for _ in range(3)]
        times = sorted(t for f in futures for t in f.result(timeout=60))
    assert len(times) == 30
    # 30 admissions at 50/s after a burst of 2: at least 28 intervals of 20 ms.
    assert times[-1] - times[0] >= 28 * 0.02 * 0.95
    assert max_in_window([(t, 1) for t in times], 0.2) <= 2 + 10 + 1
    limiter.unlink()


@pytest.mark.timeout(120)
def test_bound_across_a_dask_cluster(dask_client: Any, url: str, name: str) -> None:
    limiter = RedisRateLimiter(url, name, 40, burst=1)
    executor = ThrottledExecutor(dask_client.get_executor(), 4)
    futures = [executor.submit(tasks.acquire_times, limiter, 5, i) for i in range(4)]
    times = sorted(t for f in futures for t in f.result(timeout=60))
    assert len(set(times)) == 20
    assert times[-1] - times[0] >= 19 * 0.025 * 0.95
    limiter.unlink()


@pytest.mark.anyio
async def test_async_rate_fifo_and_cancellation(url: str, name: str) -> None:
    alimiter = AsyncRedisRateLimiter(url, name, "10/s", burst=2)
    order: list[int] = []

    async def task(i: int) -> None:
        assert await alimiter.acquire()
        order.append(i)

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(task, i)
            await anyio.sleep(0.001)
    assert order == list(range(5))
    assert time.monotonic() - start == pytest.approx(0.3, abs=0.1)  # 2 at once, then 3 more
    with anyio.move_on_after(0.03):
        await alimiter.acquire()  # reserves +100 ms, cancelled: gives it back
    begin = time.monotonic()
    assert await alimiter.acquire(timeout=1)
    assert time.monotonic() - begin < 0.1
    assert not await alimiter.acquire(timeout=0)
    alimiter.limiter.unlink()
    await alimiter.aclose()


def _share(url: str, name: str, backend: str, until: float, out: Any) -> None:
    """20 waiters loop on the limiter until ``until``; puts the admission times."""
    times: list[float] = []
    if backend == "sync":
        sync = RedisRateLimiter(url, name, "100/s")

        def loop() -> None:
            while time.monotonic() < until:
                if sync.acquire(timeout=max(0.0, until - time.monotonic())):
                    times.append(time.monotonic())

        threads = [threading.Thread(target=loop) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sync.close()
        out.put((backend, times))
        return

    async def main() -> None:
        limiter = AsyncRedisRateLimiter(url, name, "100/s")

        async def task() -> None:
            while time.monotonic() < until:
                with anyio.move_on_after(max(0.0, until - time.monotonic())):
                    await limiter.acquire()
                    times.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(task)
        await limiter.aclose()

    anyio.run(main, backend=backend)
    out.put((backend, times))


@pytest.mark.timeout(60)
def test_async_limiter_is_fair_between_processes(url: str, name: str) -> None:
    """Four processes of 20 waiters each (threads, asyncio and trio tasks) get equal shares
    of 100/s."""
    ctx = multiprocessing.get_context("fork")
    out: Any = ctx.Queue()
    until = time.monotonic() + 4.0
    backends = ["asyncio", "trio", "sync", "asyncio"]
    procs = [ctx.Process(target=_share, args=(url, name, b, until, out))
             for b in backends]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=30)[1] for _ in procs]
    for proc in procs:
        proc.join(10)
    # counted once every process surely waits (they start at different speeds)
    counts = [sum(1 for t in times if until - 2.5 <= t < until) for times in results]
    mean = sum(counts) / 4
    assert sum(counts) <= 1 + 100 * 2.5 + 4  # the bound (plus a slot in flight per process)
    assert all(abs(c - mean) <= 0.2 * mean for c in counts), counts
    RedisRateLimiter(url, name, "100/s").unlink()
