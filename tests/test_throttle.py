"""@throttle over every shape of callable, its argument checks and the rate hook."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import throttled_funcs
from helpers import lag_while
from procthrottle import AsyncSemaphore, ProcessSemaphore, throttle

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


class CountingRate:
    """A stand-in rate limiter: records when it was asked, and whether a permit was held."""

    def __init__(self, sem: ProcessSemaphore) -> None:
        self.sem = sem
        self.calls: list[int] = []

    def acquire(self, timeout: float | None = None) -> bool:
        self.calls.append(self.sem.value)
        return True


class AsyncCountingRate(CountingRate):
    async def acquire(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        await anyio.sleep(0)
        self.calls.append(self.sem.value)
        return True


async def test_rate_is_taken_after_the_permit() -> None:
    sem = ProcessSemaphore(1)
    rate, arate = CountingRate(sem), AsyncCountingRate(sem)

    @throttle(sem, rate=rate)
    def sync_call() -> int:
        return 1

    @throttle(sem, rate=arate)
    async def async_call() -> int:
        return 2

    @throttle(rate=arate)
    async def rate_only() -> int:
        return 3

    assert sync_call() == 1
    assert await async_call() == 2
    assert await rate_only() == 3
    assert rate.calls == [0]  # asked while the permit was held
    assert arate.calls == [0, 1]


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
