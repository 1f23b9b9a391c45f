"""RedisSemaphore and AsyncRedisSemaphore against a real redis-server."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

import pool_tasks as tasks
from helpers import PYTHON, lag_while, max_overlap, python_env, unique_name
from procthrottle import ThrottledExecutor

redis = pytest.importorskip("redis")
from procthrottle.redis import (  # noqa: E402
    AsyncRedisSemaphore,
    RedisSemaphore,
    RedisUnavailableError,
)
from redis_server import free_port, redis_server  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sem(url: str) -> Iterator[RedisSemaphore]:
    sem = RedisSemaphore(url, unique_name("pt-redis"), 2, lease=1.0)
    yield sem
    sem.unlink()


def intervals(path: Path) -> list[tuple[float, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(float(r[2]), float(r[3])) for r in rows]


def test_acquire_release_value(sem: RedisSemaphore) -> None:
    assert (sem.limit, sem.value, sem.lease) == (2, 2, 1.0)
    assert sem.acquire()
    assert sem.acquire(block=False)
    assert sem.value == 0
    assert sem.acquire(block=False) is False
    start = time.monotonic()
    assert sem.acquire(timeout=0.3) is False
    assert 0.28 <= time.monotonic() - start < 2
    sem.release(2)
    assert sem.value == 2
    with sem:
        assert sem.value == 1
    assert sem.value == 2


def test_over_release_and_other_handles(sem: RedisSemaphore, url: str) -> None:
    other = RedisSemaphore(url, sem.name, 2)
    assert other.acquire()
    assert sem.value == 1
    with pytest.raises(ValueError, match="handle that acquired"):
        sem.release()
    assert sem.value == 1
    other.release()
    assert sem.value == 2
    with pytest.raises(ValueError, match="already exists in Redis with limit=2"):
        RedisSemaphore(url, sem.name, 3)
    other.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((None, "x", 1), {}, TypeError),
        (("URL", "bad name", 1), {}, ValueError),
        (("URL", "x", 0), {}, ValueError),
        (("URL", "x", True), {}, TypeError),
        (("URL", "x", 1), {"lease": 0}, ValueError),
        (("URL", "x", 1), {"lease": "30"}, TypeError),
    ],
)
def test_bad_arguments(url: str, args: tuple[object, ...], kwargs: dict[str, object],
                       exc: type) -> None:
    args = tuple(url if a == "URL" else a for a in args)
    with pytest.raises(exc):
        RedisSemaphore(*args, **kwargs)  # type: ignore[arg-type]


def test_a_sigkilled_holder_loses_its_lease(url: str) -> None:
    name = unique_name("pt-redis")
    sem = RedisSemaphore(url, name, 1, lease=0.5)
    script = textwrap.dedent(
        f"""
        import time
        from procthrottle.redis import RedisSemaphore
        sem = RedisSemaphore({url!r}, {name!r}, 1, lease=0.5)
        assert sem.acquire(timeout=10)
        print("held", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([PYTHON, "-c", script], env=python_env(),
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    time.sleep(0.8)  # the child's lease was renewed meanwhile
    assert sem.acquire(block=False) is False
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    start = time.monotonic()
    assert sem.acquire(timeout=5)  # back once the lease ran out
    assert time.monotonic() - start <= 1.5
    sem.release()
    sem.unlink()


def test_leases_are_renewed_while_held(url: str) -> None:
    name = unique_name("pt-redis")
    holder, other = RedisSemaphore(url, name, 1, lease=0.3), RedisSemaphore(url, name, 1)
    assert holder.acquire()
    deadline = time.monotonic() + 1.2  # four leases long
    while time.monotonic() < deadline:
        assert other.acquire(block=False) is False
        time.sleep(0.05)
    holder.release()
    assert other.acquire(block=False)
    other.release()
    holder.close()
    other.unlink()


def test_pickles_by_settings_and_bounds_a_process_pool(url: str, tmp_path: Path) -> None:
    sem = RedisSemaphore(url, unique_name("pt-redis"), 2)
    copy = pickle.loads(pickle.dumps(sem))
    assert (copy.name, copy.limit) == (sem.name, 2)
    copy.close()
    record = tmp_path / "intervals"
    ctx = multiprocessing.get_context("spawn")
    with ThrottledExecutor(ProcessPoolExecutor(4, mp_context=ctx), sem) as executor:
        futures = [executor.submit(tasks.hold, str(record), 0.1, i) for i in range(8)]
        assert [f.result(timeout=60) for f in futures] == list(range(8))
    assert max_overlap(intervals(record)) == 2
    assert sem.value == 2
    sem.unlink()


def test_pickles_a_client_without_a_url(url: str) -> None:
    client = redis.Redis.from_url(url)
    sem = RedisSemaphore(client, unique_name("pt-redis"), 1)
    copy = pickle.loads(pickle.dumps(sem))
    assert copy.acquire()
    assert sem.value == 0
    copy.release()
    copy.close()
    sem.unlink()
    client.close()


def test_only_plain_data_is_stored(sem: RedisSemaphore, url: str) -> None:
    assert sem.acquire()
    client = redis.Redis.from_url(url)
    holders, limit = sem._keys[:2]
    assert client.type(holders) == b"zset"
    assert client.get(limit) == b"2"
    for member in client.zrange(holders, 0, -1):
        assert re.fullmatch(rb"[0-9a-f]+-[0-9]+-[0-9a-f]+", member)  # a token, not a pickle
    sem.release()
    client.close()


def test_redis_down_is_a_clear_error() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError, match="is redis-server running") as info:
        RedisSemaphore(url, "x", 1)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_redis_going_down_keeps_the_count(caplog: pytest.LogCaptureFixture) -> None:
    name = unique_name("pt-redis")
    with redis_server(password="s3cret") as url:
        sem = RedisSemaphore(url, name, 2, lease=0.3)
        assert "s3cret" not in repr(sem)
        assert "***" in repr(sem)
        assert sem.acquire()
        copy = pickle.loads(pickle.dumps(sem))  # the password travels in the pickle only
        assert copy.value == 1
        copy.close()
    with caplog.at_level(logging.WARNING, logger="procthrottle.redis"):
        time.sleep(0.4)  # the renewer fails at least once, and logs it
        with pytest.raises(RedisUnavailableError):
            sem.acquire(block=False)
        with pytest.raises(RedisUnavailableError):
            sem.release()
        sem.close()
    assert "could not renew" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.anyio
async def test_async_redis_semaphore(url: str) -> None:
    sem = AsyncRedisSemaphore(url, unique_name("pt-redis"), 3, lease=2.0)
    current = peak = 0

    async def user() -> None:
        nonlocal current, peak
        async with sem:
            current += 1
            peak = max(peak, current)
            await anyio.sleep(0.01)
            current -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(user)
    assert peak == 3
    inner = sem.semaphore
    assert isinstance(inner, RedisSemaphore)
    # releases are made by the waiter thread, off the loop: they land within a round trip
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(lambda: inner.value) != 3:
            await anyio.sleep(0.01)
    assert await sem.acquire(timeout=0.5)
    sem.release()
    await anyio.to_thread.run_sync(inner.unlink)


@pytest.mark.anyio
async def test_async_redis_semaphore_never_blocks_the_loop() -> None:
    """A 1.5 s server stall delays the task that waits for Redis, not the event loop."""
    try:
        server = redis_server()
        own_url = server.__enter__()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        sem = AsyncRedisSemaphore(own_url, unique_name("pt-redis"), 1)
        pid = int(redis.Redis.from_url(own_url).info()["process_id"])
        stalled = 0.0

        async def uncontended() -> None:
            nonlocal stalled
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(1.5, os.kill, (pid, signal.SIGCONT)).start()
            start = time.monotonic()
            async with sem:
                stalled = time.monotonic() - start

        lag = await lag_while(uncontended)
        assert stalled > 1.0  # the acquire did wait for the stalled server...
        assert lag < 0.3, f"the loop stalled {lag:.2f} s"  # ...but the loop kept running
        inner = sem.semaphore
        assert isinstance(inner, RedisSemaphore)
        await anyio.to_thread.run_sync(inner.unlink)
    finally:
        server.__exit__(None, None, None)


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
    client.close()
    return server


@pytest.mark.anyio
async def test_async_redis_outage_reaches_waiters_and_recovers(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = _start_redis(port)
    own_url = f"redis://127.0.0.1:{port}/0"
    name = unique_name("pt-redis")
    try:
        sem = AsyncRedisSemaphore(own_url, name, 1, lease=5.0)
        holder = RedisSemaphore(own_url, name, 1, lease=5.0)
        assert holder.acquire(block=False)
        errors: list[BaseException] = []

        async def user() -> None:
            try:
                await sem.acquire()
            except RedisUnavailableError as exc:
                errors.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(user)
                await anyio.sleep(0.2)  # they wait: the thread polls Redis
                server.terminate()
                server.wait(10)
        assert len(errors) == 3  # the outage reached every waiting task
        server = _start_redis(port)  # Redis is back (empty)
        with anyio.fail_after(10):
            assert await sem.acquire(timeout=5)  # the adapter works again
        sem.release()
        inner = sem.semaphore
        assert isinstance(inner, RedisSemaphore)
        with caplog.at_level(logging.CRITICAL, logger="procthrottle.redis"):
            await anyio.to_thread.run_sync(holder.close)
            await anyio.to_thread.run_sync(inner.unlink)
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.timeout(120)
def test_dask_cluster_bounded_through_redis(url: str, dask_client: Any, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    sem = RedisSemaphore(url, unique_name("pt-redis"), 2)
    executor = ThrottledExecutor(dask_client.get_executor(), sem)
    futures = [executor.submit(tasks.hold, str(record), 0.1, i) for i in range(8)]
    assert [f.result(timeout=60) for f in futures] == list(range(8))
    assert max_overlap(intervals(record)) == 2
    assert sem.value == 2
    sem.unlink()
