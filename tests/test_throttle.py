"""@throttle over every shape of callable, its argument checks and the rate hook."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import time
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

import throttled_funcs
from helpers import lag_while
from procthrottle import AsyncRateLimiter, AsyncSemaphore, ProcessSemaphore, RateLimiter, throttle

pytestmark = pytest.mark.anyio


class Peak:
    """Counts how many calls run at once."""

    def __init__(self) -> None:
        self.current = self.peak = 0

    def __enter__(self) -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)

    def __exit__(self, *exc: object) -> None:
        self.current -= 1


async def test_object_with_async_call_is_awaited_under_the_permit() -> None:
    peak = Peak()
    sem = ProcessSemaphore(1)

    class Fetch:
        """Fetch one thing."""

        async def __call__(self, i: int) -> int:
            with peak:
                await anyio.sleep(0.01)
            return i

    fetch = throttle(sem)(Fetch())
    assert inspect.iscoroutinefunction(fetch)

    async def calls() -> None:
        sem.acquire()  # held for 0.3 s by "someone else": the calls wait for it
        threading.Timer(0.3, sem.release).start()
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(fetch, i)

    assert await lag_while(calls) < 0.2  # the kernel wait never blocks the loop
    assert peak.peak == 1
    assert await fetch(7) == 7
    assert fetch.__doc__ == "Fetch one thing."


def _bounded_class(sem: ProcessSemaphore, peak: Peak) -> Any:
    class Service:
        @throttle(sem)
        @staticmethod
        async def static_above(x: int) -> int:
            with peak:
                await anyio.sleep(0.005)
            return x

        @staticmethod
        @throttle(sem)
        async def static_below(x: int) -> int:
            with peak:
                await anyio.sleep(0.005)
            return x

        @throttle(sem)
        @classmethod
        async def class_above(cls, x: int) -> str:
            with peak:
                await anyio.sleep(0.005)
            return f"{cls.__name__}{x}"

        @classmethod
        @throttle(sem)
        async def class_below(cls, x: int) -> str:
            with peak:
                await anyio.sleep(0.005)
            return f"{cls.__name__}{x}"

        @throttle(sem)
        @staticmethod
        def sync_static(x: int) -> int:
            with peak:
                time.sleep(0.005)
            return x

        @throttle(sem)
        @classmethod
        def sync_class(cls, x: int) -> str:
            with peak:
                time.sleep(0.005)
            return f"{cls.__name__}{x}"

    return Service


async def test_static_and_class_methods_in_either_order() -> None:
    sem, peak = ProcessSemaphore(1), Peak()
    service = _bounded_class(sem, peak)
    for obj in (service, service()):
        for name in ("static_above", "static_below"):
            results: list[int] = []

            async def call(fn: Any, i: int, results: list[int] = results) -> None:
                results.append(await fn(i))

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(call, getattr(obj, name), i)
            assert sorted(results) == list(range(5))
        for name in ("class_above", "class_below"):
            assert await getattr(obj, name)(3) == "Service3"
        assert obj.sync_static(4) == 4
        assert obj.sync_class(5) == "Service5"
    assert peak.peak == 1
    assert sem.value == 1
    assert service.static_above.__name__ == "static_above"
    assert service.class_below.__doc__ is None


def test_generator_functions_are_refused_at_decoration() -> None:
    """Calling one only makes the generator: the body would run unbounded, after the call."""

    async def stream() -> AsyncIterator[int]:
        yield 1

    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"async generator function .*async with"):
        throttle(2)(stream)
    with pytest.raises(TypeError, match=r"the generator function .*`with sem:`"):
        throttle(2)(rows)


def test_bare_decorator_and_no_arguments_say_what_to_do() -> None:
    def work() -> None:
        pass

    with pytest.raises(TypeError, match=r"use @throttle\(N\)"):
        throttle(work)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use @throttle\(N\)"):
        throttle()
    with pytest.raises(TypeError, match="rate must be"):
        throttle(2, rate=object())


class WaitingRate:
    """A real RateLimiter whose next slot is `wait` s away; says when a caller starts waiting."""

    def __init__(self, wait: float) -> None:
        self.limiter = RateLimiter(1, per=wait)
        self.limiter.acquire()  # the slot now is taken: the next is `wait` s away
        self.waiting = threading.Event()

    def acquire(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return self.limiter.acquire(timeout=timeout)


class AsyncWaitingRate(WaitingRate):
    async def acquire(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        self.waiting.set()
        return await AsyncRateLimiter(self.limiter).acquire(timeout=timeout)


@pytest.mark.timeout(30)
def test_no_permit_is_held_while_waiting_for_the_rate() -> None:
    sem = ProcessSemaphore(1)
    rate = WaitingRate(1.0)

    @throttle(sem, rate=rate)
    def call() -> int:
        return sem.value

    caller = ThreadPoolExecutor(1)
    inside = caller.submit(call)
    assert rate.waiting.wait(10)
    # another user of the semaphore gets the permit while the call sleeps for its rate slot
    assert sem.acquire(timeout=0.3)
    sem.release()
    assert inside.result(10) == 0  # and the call took the permit once its slot came
    caller.shutdown()
    assert sem.value == 1


@pytest.mark.timeout(30)
async def test_no_permit_is_held_while_awaiting_the_rate() -> None:
    sem = ProcessSemaphore(1)
    rate = AsyncWaitingRate(1.0)
    seen: list[int] = []

    @throttle(sem, rate=rate)
    async def call() -> None:
        seen.append(sem.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.to_thread.run_sync(rate.waiting.wait, 10)
        got = await anyio.to_thread.run_sync(lambda: sem.acquire(timeout=0.3))
        assert got  # free while the call awaits its rate slot
        sem.release()
    assert seen == [0]
    assert sem.value == 1


def test_a_plain_function_returning_a_coroutine_is_refused_permit_back() -> None:
    sem = ProcessSemaphore(1)

    async def fetch() -> int:
        return 1

    def make() -> Coroutine[Any, Any, int]:
        return fetch()  # a plain def (or a lambda) that returns a coroutine

    wrapped = throttle(sem)(make)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited"
        with pytest.raises(TypeError, match="async def"):
            wrapped()  # type: ignore[unused-coroutine]  # it raises
    assert sem.value == 1


def test_decorated_module_functions_pickle_by_reference() -> None:
    for fn in (throttled_funcs.bounded, throttled_funcs.bounded_async):
        assert pickle.loads(pickle.dumps(fn)) is fn


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_throttle_with_an_async_semaphore_keeps_the_adapter() -> None:
    asem = AsyncSemaphore(1)

    @throttle(asem, timeout=0.05)
    async def call() -> None:
        await asyncio.sleep(0.2)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError, match="call"):
        await call()
    await task
    assert asem.value == 1
