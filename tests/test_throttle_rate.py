"""`@throttle(rate=...)`: calls start at the rate, sync and async, with and without a limit."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import anyio
import pytest

from procthrottle import RateLimiter, throttle


def gaps(starts: list[float]) -> list[float]:
    starts = sorted(starts)
    return [b - a for a, b in itertools.pairwise(starts)]


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_async_calls_start_at_the_rate_without_threads() -> None:
    starts: list[float] = []

    @throttle(rate="20/s")  # burst 1: one start per 50 ms
    async def call() -> None:
        starts.append(time.monotonic())

    def ours() -> list[str]:  # trio keeps a thread cache of its own: count only ours
        return [t.name for t in threading.enumerate() if t.name.startswith("procthrottle")]

    threads = ours()
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(call)
    assert len(starts) == 8
    # slots are 50 ms apart; a sleeper wakes a little late, never early
    assert sorted(starts)[-1] - sorted(starts)[0] >= 7 * 0.05 - 0.01
    assert ours() == threads  # slept on the loop, no thread


@pytest.mark.timeout(30)
def test_sync_calls_with_a_limit_and_a_rate() -> None:
    limiter = RateLimiter(25)  # 40 ms apart
    starts: list[float] = []
    lock = threading.Lock()
    inside, peak = 0, 0

    @throttle(2, rate=limiter)
    def call() -> None:
        nonlocal inside, peak
        with lock:
            starts.append(time.monotonic())
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.1)
        with lock:
            inside -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak <= 2
    assert min(gaps(starts)) >= 0.04 - 0.005
    limiter.close()


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_no_turn_in_time_raises_timeout_error_and_wastes_nothing() -> None:
    limiter = RateLimiter("2/s")  # slots 0.5 s apart

    @throttle(rate=limiter, timeout=0.05)
    async def call() -> int:
        return 1

    first = time.monotonic()
    assert await call() == 1
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        await call()  # its slot is 0.5 s away: refused at once
    assert time.monotonic() - first < 0.3
    # the refused call reserved nothing: the next slot is still 0.5 s after the first, not 1 s
    assert limiter.acquire(timeout=2)
    assert time.monotonic() - first < 0.8
    limiter.close()


def test_bad_rates_are_refused_when_decorating() -> None:
    with pytest.raises(ValueError, match="10/s"):
        throttle(rate="fast")
    with pytest.raises(TypeError, match="rate must be"):
        throttle(rate=object())
    with pytest.raises(TypeError, match="rate must be"):
        throttle(rate=True)

    class Blocking:  # a limiter that can only block (like RedisRateLimiter)
        def acquire(self, n: int = 1, *, block: bool = True, timeout: Any = None) -> bool:
            return True

    decorate = throttle(rate=Blocking())
    assert decorate(lambda: 3)() == 3  # fine for sync code

    async def coroutine() -> None: ...

    with pytest.raises(TypeError, match="cannot bound the async function"):
        decorate(coroutine)

    class AwaitOnly:  # a limiter that can only be awaited
        async def acquire(self, timeout: Any = None) -> bool:
            return True

    with pytest.raises(TypeError, match="can only be awaited"):
        throttle(rate=AwaitOnly())(lambda: 3)
