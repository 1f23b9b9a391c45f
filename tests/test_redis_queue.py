"""RedisSemaphore's waiters: a FIFO queue in Redis, woken by the release, at O(1) cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from helpers import unique_name

redis = pytest.importorskip("redis")
from procthrottle import AsyncSemaphore  # noqa: E402
from procthrottle.redis import AsyncRedisSemaphore, RedisRateLimiter, RedisSemaphore  # noqa: E402
from redis_server import redis_server  # noqa: E402

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def own_url() -> Iterator[str]:
    try:
        with redis_server() as found:
            yield found
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def commands(url: str) -> int:
    """Commands the server ran so far (scripts' own calls included)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())
    finally:
        client.close()


def test_waiters_are_served_in_order_of_arrival_across_clients(url: str) -> None:
    name = unique_name("pt-redis")
    holder = RedisSemaphore(url, name, 1)
    assert holder.acquire()
    order: list[int] = []
    handles = [RedisSemaphore(url, name, 1) for _ in range(6)]  # six clients

    def wait(i: int) -> None:
        assert handles[i].acquire(timeout=30)
        order.append(i)
        time.sleep(0.01)
        handles[i].release()

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=wait, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 5  # the next one arrives once this one is queued
        while len(redis.Redis.from_url(url).zrange(holder._keys[2], 0, -1)) < i + 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    holder.release()
    for thread in threads:
        thread.join(30)
    assert order == list(range(6))
    for handle in handles:
        handle.close()
    holder.unlink()


def test_waiting_costs_no_polling_and_a_release_wakes_at_once(own_url: str) -> None:
    """200 threads wait (more than redis-py's pool of 100 would allow): the server runs a
    few commands a second for all of them, and each release hands the permit on promptly."""
    name = unique_name("pt-redis")
    sem = RedisSemaphore(own_url, name, 1, lease=10.0)
    holder = RedisSemaphore(own_url, name, 1, lease=10.0)
    assert holder.acquire()
    got: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    released_at: list[float] = []

    def wait() -> None:
        try:
            assert sem.acquire(timeout=60)
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        with lock:
            got.append(time.monotonic())
            released_at.append(time.monotonic())
            sem.release()

    threads = [threading.Thread(target=wait) for _ in range(200)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while redis.Redis.from_url(own_url).zcard(holder._keys[2]) < 200:
        assert time.monotonic() < deadline, "the waiters did not all queue up"
        time.sleep(0.05)
    before = commands(own_url)
    time.sleep(2.0)
    per_second = (commands(own_url) - before - 1) / 2.0
    assert per_second <= 15, f"{per_second:.0f} commands/s while 200 threads wait"
    start = time.monotonic()
    holder.release()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert len(got) == 200
    elapsed = time.monotonic() - start
    # 200 hand-overs, each a release script and a wake-up: far less than polling would take
    assert elapsed < 10, f"{elapsed:.1f} s for 200 hand-overs"
    sem.close()
    holder.unlink()


def test_a_dead_waiters_place_expires(url: str) -> None:
    """A waiter whose process stopped heartbeating is skipped by the release."""
    name = unique_name("pt-redis")
    holder = RedisSemaphore(url, name, 1)
    assert holder.acquire()
    client = redis.Redis.from_url(url)
    # a waiter of a client that is not alive (no heartbeat): queued first
    client.zadd(holder._keys[2], {"deadbeefdeadbeef-1000-00": 0})
    other = RedisSemaphore(url, name, 1)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(other.acquire(timeout=10)))
    thread.start()
    time.sleep(0.2)
    holder.release()
    thread.join(15)
    assert result == [True]
    other.release()
    other.close()
    client.close()
    holder.unlink()


@pytest.mark.anyio
async def test_async_waiters_are_woken_in_order(url: str) -> None:
    name = unique_name("pt-redis")
    sem = AsyncRedisSemaphore(url, name, 1, lease=5.0)
    holder = RedisSemaphore(url, name, 1)
    assert await anyio.to_thread.run_sync(holder.acquire)
    order: list[int] = []

    async def task(i: int) -> None:
        async with sem:
            order.append(i)

    queue_key = holder._keys[2]
    client = redis.Redis.from_url(url)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(task, i)
                while await anyio.to_thread.run_sync(client.zcard, queue_key) < i + 1:
                    await anyio.sleep(0.005)
            await anyio.to_thread.run_sync(holder.release)
    assert order == list(range(20))
    client.close()
    await anyio.to_thread.run_sync(holder.unlink)


@pytest.mark.anyio
async def test_async_semaphore_over_a_redis_semaphore_waits_in_the_servers_queue(
    url: str,
) -> None:
    """AsyncSemaphore(RedisSemaphore(...)) is the Redis adapter: its tasks take their places in
    the server's queue and are served in order (the generic adapter could only poll with
    non-blocking tries, which never win a place while others queue: its tasks starved)."""
    name = unique_name("pt-redis")
    redis_sem = RedisSemaphore(url, name, 1, lease=5.0)
    sem = AsyncSemaphore(redis_sem)
    assert isinstance(sem, AsyncRedisSemaphore)
    assert sem.semaphore is redis_sem
    holder = RedisSemaphore(url, name, 1)
    assert await anyio.to_thread.run_sync(holder.acquire)
    order: list[int] = []

    async def task(i: int) -> None:
        async with sem:
            order.append(i)

    queue_key = holder._keys[2]
    client = redis.Redis.from_url(url)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(task, i)
                while await anyio.to_thread.run_sync(client.zcard, queue_key) < i + 1:
                    await anyio.sleep(0.005)
            await anyio.to_thread.run_sync(holder.release)
    assert order == list(range(5))
    client.close()
    redis_sem.close()
    await anyio.to_thread.run_sync(holder.unlink)


def test_state_that_cannot_matter_expires(url: str) -> None:
    name = unique_name("pt-redis")
    sem = RedisSemaphore(url, name, 1, lease=1.0)
    rate = RedisRateLimiter(url, name + "-rate", 10)
    assert sem.acquire()
    threading.Timer(0.3, sem.release).start()
    assert sem.acquire(timeout=5)  # waited: queue, clients, seq and wake keys were written
    assert rate.acquire()
    client = redis.Redis.from_url(url)
    keys = [k for k in client.keys("procthrottle:{" + name + "*") if client.exists(k)]
    assert len(keys) >= 6, keys
    for key in keys:
        ttl = client.pttl(key)
        assert 0 < ttl <= 2 * 60_000 + 10_000, (key, ttl)  # a lease and the grace, at most
    sem.release()
    sem.close()
    rate.close()
    client.close()


@pytest.mark.anyio
async def test_cancelled_async_waiters_leave_nothing_behind(url: str) -> None:
    name = unique_name("pt-redis")
    sem = AsyncRedisSemaphore(url, name, 1, lease=5.0)
    holder = RedisSemaphore(url, name, 1)
    assert await anyio.to_thread.run_sync(holder.acquire)
    client = redis.Redis.from_url(url)
    queue_key = holder._keys[2]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(sem.acquire)
            while await anyio.to_thread.run_sync(client.zcard, queue_key) < 10:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        while await anyio.to_thread.run_sync(client.zcard, queue_key):
            await anyio.sleep(0.01)  # their places are given up (by a background thread)
    await anyio.to_thread.run_sync(holder.release)
    with anyio.fail_after(5):
        assert await sem.acquire(timeout=3)  # the permit was not granted to a dead waiter
    sem.release()
    client.close()
    await anyio.to_thread.run_sync(holder.unlink)


def test_a_mismatched_limit_is_refused_by_acquire_too(url: str) -> None:
    name = unique_name("pt-redis")
    sem = RedisSemaphore(url, name, 2)
    RedisSemaphore(url, name, 2).unlink()
    other = RedisSemaphore(url, name, 3)  # the name is made again with another limit
    for block in (False, True):
        with pytest.raises(ValueError, match="already exists in Redis with limit=3"):
            sem.acquire(block=block, timeout=1)
    assert sem._mine().waiting.pending() == 0  # nothing to clean up: nothing was done
    sem.close()
    other.unlink()


def test_close_reaches_threads_waiting_on_the_handle(url: str) -> None:
    from procthrottle import SemaphoreClosedError

    name = unique_name("pt-redis")
    holder = RedisSemaphore(url, name, 1)
    assert holder.acquire()
    sem = RedisSemaphore(url, name, 1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            sem.acquire(timeout=30)
        except SemaphoreClosedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while redis.Redis.from_url(url).zcard(holder._keys[2]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = time.monotonic()
    sem.close()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 3
    assert time.monotonic() - start < 2
    # their places were given up: the holder's release leaves the permit free
    deadline = time.monotonic() + 5
    while redis.Redis.from_url(url).zcard(holder._keys[2]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    holder.release()
    assert holder.value == 1
    holder.unlink()


def test_an_acquire_that_reaches_the_server_twice_takes_one_permit(url: str) -> None:
    """Tokens are the client's: the same acquire arriving again (a retry, a heartbeat that
    queued it first) changes nothing, and giving it up afterwards frees everything."""
    name = unique_name("pt-redis")
    sem = RedisSemaphore(url, name, 2)
    local = sem._mine()
    token = sem._token(local)
    assert sem._try_acquire(token, True, None) == 1
    assert sem._try_acquire(token, True, None) == 1  # still one permit, not queued
    assert sem.value == 1
    assert sem._cancel(token, False, None) == 3  # given back
    assert sem._try_acquire(token, True, None) == 2  # arriving after that: nothing
    client = redis.Redis.from_url(url)
    assert (client.zcard(sem._keys[0]), client.zcard(sem._keys[2])) == (0, 0)
    client.close()
    sem.unlink()
