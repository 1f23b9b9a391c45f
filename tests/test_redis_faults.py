"""The Redis classes when things go wrong: secrets, forks, a stalled or restarted server."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from helpers import PYTHON, python_env, unique_name

redis = pytest.importorskip("redis")
from procthrottle.redis import (  # noqa: E402
    AsyncRedisRateLimiter,
    AsyncRedisSemaphore,
    LeaseLostError,
    RedisRateLimiter,
    RedisSemaphore,
    RedisUnavailableError,
)
from redis_server import free_port, redis_server, stopped  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cretPW"


@pytest.fixture
def own_url() -> Iterator[str]:
    """A server of this test alone (it gets stopped, killed or restarted)."""
    try:
        with redis_server() as found:
            yield found
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def leftovers(url: str, name: str) -> dict[str, int]:
    """How many holders and queued waiters the semaphore has in Redis."""
    client = redis.Redis.from_url(url)
    tag = "procthrottle:{" + name + "}:"
    try:
        return {"holders": client.zcard(tag + "holders"), "queue": client.zcard(tag + "queue")}
    finally:
        client.close()


def eventually(check: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


# -- 1: passwords ---------------------------------------------------------------------------
def test_passwords_never_show_in_any_form(caplog: pytest.LogCaptureFixture) -> None:
    with redis_server(password=SECRET) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        forms: list[object] = [
            f"redis://:{SECRET}@127.0.0.1:{port}/0",
            f"redis://default:{SECRET}@127.0.0.1:{port}/0",
            f"redis://127.0.0.1:{port}/0?password={SECRET}",
            redis.Redis(host="127.0.0.1", port=port, password=SECRET),
        ]
        name = unique_name("pt-redis")
        for form in forms:
            sem = RedisSemaphore(form, name, 1, lease=0.3)  # type: ignore[arg-type]
            rate = RedisRateLimiter(form, name + "-rate", 10)  # type: ignore[arg-type]
            assert SECRET not in repr(sem)
            assert SECRET not in repr(rate)
            assert "***" in repr(sem)
            assert sem.acquire(timeout=5)
            sem.release()
            sem.close()
            rate.unlink()
    dead = free_port()
    down: list[object] = [
        f"redis://127.0.0.1:{dead}/0?password={SECRET}",
        f"redis://user:{SECRET}@127.0.0.1:{dead}/0",
        f"unix:///nonexistent/redis.sock?password={SECRET}&db=2",
        redis.Redis(unix_socket_path="/nonexistent/redis.sock", password=SECRET),
    ]
    with caplog.at_level(logging.DEBUG):
        for form in down:
            for make in (lambda f: RedisSemaphore(f, "x", 1),
                         lambda f: RedisRateLimiter(f, "x", 10)):
                with pytest.raises(RedisUnavailableError) as info:
                    make(form)
                assert SECRET not in str(info.value), str(info.value)
                assert "***" in str(info.value)
            limiter = AsyncRedisRateLimiter(form, "x", 10)  # type: ignore[arg-type]
            assert SECRET not in repr(limiter)
            limiter.limiter.close()
    assert SECRET not in caplog.text


# -- 2: a forked child ----------------------------------------------------------------------
def _child_release_then_close(sem: RedisSemaphore, result: multiprocessing.Queue[str]) -> None:
    try:
        sem.release()
    except ValueError:
        result.put("ValueError")
    else:
        result.put("released")
    sem.close()  # must not free the parent's permit


def test_a_forked_child_never_frees_its_parents_permit(url: str) -> None:
    name = unique_name("pt-redis")
    sem = RedisSemaphore(url, name, 1, lease=5.0)
    assert sem.acquire(timeout=5)
    ctx = multiprocessing.get_context("fork")
    result: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_child_release_then_close, args=(sem, result))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert result.get(timeout=5) == "ValueError"
    other = RedisSemaphore(url, name, 1)
    assert other.acquire(block=False) is False  # still held by the parent
    assert sem.value == 0
    sem.release()  # the parent's release works
    assert other.acquire(block=False)
    other.release()
    other.close()
    sem.unlink()


# -- 5 and 3: a stalled server --------------------------------------------------------------
def test_timeouts_hold_while_the_server_is_stopped(own_url: str) -> None:
    name = unique_name("pt-redis")
    holder = RedisSemaphore(own_url, name, 1, lease=10.0)
    sem = RedisSemaphore(own_url, name, 1, lease=10.0)
    rate = RedisRateLimiter(own_url, name + "-rate", 10)
    assert holder.acquire(timeout=5)
    with stopped(own_url):
        calls: list[tuple[Callable[[], bool], float]] = [
            (lambda: sem.acquire(timeout=0.5), 0.5),
            (lambda: sem.acquire(block=False), 0.0),
            (lambda: rate.acquire(timeout=0.5), 0.5),
            (lambda: rate.acquire(block=False), 0.0),
        ]
        for call, expected in calls:
            start = time.monotonic()
            assert call() is False
            assert time.monotonic() - start <= expected + 0.25, call
    # the calls cut short left nothing behind: only the holder's lease remains
    assert eventually(lambda: leftovers(own_url, name) == {"holders": 1, "queue": 0})
    holder.release()
    assert sem.acquire(timeout=2)  # the permit came back at once, not after a lease
    sem.release()
    for handle in (holder, sem, rate):
        handle.close()


def test_an_acquire_cut_short_leaves_nothing_behind(own_url: str) -> None:
    """The server runs the acquire only after its caller gave up: the token is given back."""
    name = unique_name("pt-redis")
    sem = RedisSemaphore(own_url, name, 1, lease=30.0)
    with stopped(own_url):
        assert sem.acquire(timeout=0.3) is False  # sent, not answered: runs on SIGCONT
    assert eventually(lambda: leftovers(own_url, name) == {"holders": 0, "queue": 0})
    other = RedisSemaphore(own_url, name, 1, lease=30.0)
    assert other.acquire(timeout=1)  # not 30 s later
    other.release()
    other.close()
    sem.close()


def test_no_timeout_means_a_bounded_call_not_a_hang(own_url: str) -> None:
    client = redis.Redis.from_url(own_url, socket_timeout=0.5)
    sem = RedisSemaphore(client, unique_name("pt-redis"), 1)
    holder = RedisSemaphore(own_url, sem.name, 1)
    assert holder.acquire()
    threading.Timer(1.5, holder.release).start()
    assert sem.acquire(timeout=10)  # waiting longer than the socket timeout is no outage
    sem.release()
    holder.close()
    with stopped(own_url):
        start = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="did not answer"):
            sem.acquire()
        assert time.monotonic() - start < 1.5
    sem.close()
    client.close()


@pytest.mark.anyio
async def test_async_calls_obey_cancellation_while_the_server_is_stopped(own_url: str) -> None:
    name = unique_name("pt-redis")
    rate = AsyncRedisRateLimiter(own_url, name, 10)
    sem = AsyncRedisSemaphore(own_url, name + "-sem", 1)
    with stopped(own_url):
        for call in (rate.acquire, sem.acquire):
            start = time.monotonic()
            with anyio.move_on_after(0.5):
                await call()
            assert time.monotonic() - start <= 0.6
            start = time.monotonic()
            assert await call(timeout=0.3) is False
            assert time.monotonic() - start <= 0.45
        start = time.monotonic()
        assert sem.value == 1  # a snapshot: no call, no wait
        assert time.monotonic() - start < 0.05
    with anyio.fail_after(5):
        assert await sem.acquire(timeout=3)
    sem.release()
    await rate.aclose()
    await anyio.to_thread.run_sync(sem.semaphore.close)  # type: ignore[attr-defined]


# -- 4: lost leases -------------------------------------------------------------------------
def test_a_lease_lost_to_a_restart_is_surfaced(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    name = unique_name("pt-redis")
    with redis_server(port=port) as url:
        sem = RedisSemaphore(url, name, 1, lease=0.5)
        assert sem.acquire(timeout=5)
        assert not sem.lease_lost
    with caplog.at_level(logging.CRITICAL, logger="procthrottle.redis"), \
            redis_server(port=port) as url:  # restarted, empty
        other = RedisSemaphore(url, name, 1, lease=0.5)
        assert other.acquire(timeout=5)  # the bound did not survive the restart...
        assert eventually(lambda: sem.lease_lost)  # ...and the holder can tell
        with pytest.raises(LeaseLostError, match="lease"):
            sem.release()
        assert not sem.lease_lost
        with pytest.raises(ValueError):
            sem.release()  # it was released all the same
        other.release()
        other.close()
        sem.close()


def test_a_paused_holder_hears_that_its_lease_was_lost(url: str) -> None:
    name = unique_name("pt-redis")
    script = textwrap.dedent(
        f"""
        import sys
        from procthrottle.redis import LeaseLostError, RedisSemaphore
        sem = RedisSemaphore({url!r}, {name!r}, 1, lease=0.3)
        assert sem.acquire(timeout=10)
        print("held", flush=True)
        sys.stdin.readline()  # paused (SIGSTOP) meanwhile, for longer than the lease
        try:
            sem.release()
        except LeaseLostError:
            print("lost", flush=True)
        else:
            print("released", flush=True)
        """
    )
    child = subprocess.Popen([PYTHON, "-c", script], env=python_env(), text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    os.kill(child.pid, signal.SIGSTOP)
    other = RedisSemaphore(url, name, 1, lease=5.0)
    assert other.acquire(timeout=5)  # let in once the paused holder's lease ran out
    os.kill(child.pid, signal.SIGCONT)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "lost\n"
    child.wait(20)
    child.stdin.close()
    child.stdout.close()
    other.release()
    other.unlink()


# -- 7: no client per event loop ------------------------------------------------------------
def test_async_rate_limiter_keeps_nothing_per_event_loop(own_url: str) -> None:
    limiter = AsyncRedisRateLimiter(own_url, unique_name("pt-redis-rate"), 10_000)
    admin = redis.Redis.from_url(own_url)

    async def once() -> None:
        assert await limiter.acquire(timeout=5)

    asyncio.run(once())
    before = len(admin.client_list())
    for _ in range(30):
        asyncio.run(once())
    assert len(admin.client_list()) <= before + 1
    limiter.limiter.unlink()
    admin.close()


def test_a_sigkilled_waiters_place_costs_seconds_not_a_lease(url: str) -> None:
    """A waiter killed while it waits: the release may still grant it the permit (its
    heartbeat is recent), but that grant lasts only until its process would confirm it."""
    name = unique_name("pt-redis")
    holder = RedisSemaphore(url, name, 1, lease=60.0)
    assert holder.acquire()
    script = textwrap.dedent(
        f"""
        from procthrottle.redis import RedisSemaphore
        sem = RedisSemaphore({url!r}, {name!r}, 1, lease=60.0)
        print("waiting", flush=True)
        sem.acquire()
        """
    )
    child = subprocess.Popen([PYTHON, "-c", script], env=python_env(), text=True,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    assert eventually(lambda: leftovers(url, name)["queue"] == 1, 10)
    child.kill()
    child.wait(10)
    child.stdout.close()
    holder.release()  # granted to the dead waiter, whose heartbeat is still fresh
    start = time.monotonic()
    assert holder.acquire(timeout=20)
    assert time.monotonic() - start < 8  # not the dead waiter's 60 s lease
    holder.release()
    holder.unlink()


def test_a_paused_waiter_taken_for_dead_queues_again(url: str) -> None:
    """A waiting process paused past its heartbeats loses its place; resumed, it queues
    again rather than waiting forever for a grant that was skipped."""
    name = unique_name("pt-redis")
    holder = RedisSemaphore(url, name, 1, lease=30.0)
    assert holder.acquire()
    script = textwrap.dedent(
        f"""
        from procthrottle.redis import RedisSemaphore
        sem = RedisSemaphore({url!r}, {name!r}, 1, lease=30.0)
        print("waiting", flush=True)
        print("got" if sem.acquire(timeout=30) else "timeout", flush=True)
        sem.release()
        """
    )
    child = subprocess.Popen([PYTHON, "-c", script], env=python_env(), text=True,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    assert eventually(lambda: leftovers(url, name)["queue"] == 1, 10)
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(6.5)  # past its last heartbeat's life
    holder.release()  # skips the waiter taken for dead: the permit stays free
    assert leftovers(url, name) == {"holders": 0, "queue": 0}
    os.kill(child.pid, signal.SIGCONT)
    assert child.stdout.readline() == "got\n"
    child.wait(20)
    child.stdout.close()
    holder.unlink()


def test_a_call_slower_than_the_clients_socket_timeout_is_an_outage(own_url: str) -> None:
    """With socket_timeout=0.3 and a caller's timeout of 5 s, a stalled server is an outage
    (the client said so), not a timeout that elapsed: it raises, after 0.3 s."""
    client = redis.Redis.from_url(own_url, socket_timeout=0.3)
    sem = RedisSemaphore(client, unique_name("pt-redis"), 1)
    rate = RedisRateLimiter(client, unique_name("pt-redis-rate"), 10)
    with stopped(own_url):
        calls: list[Callable[[], bool]] = [lambda: sem.acquire(timeout=5),
                                           lambda: rate.acquire(timeout=5)]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(RedisUnavailableError, match="did not answer"):
                call()
            assert time.monotonic() - start < 1
    sem.close()
    rate.close()
    client.close()
