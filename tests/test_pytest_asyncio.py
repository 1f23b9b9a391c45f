"""procthrottle under pytest-asyncio (the docs recipe), not only anyio's plugin."""

from __future__ import annotations

import asyncio

import pytest

from procthrottle import AsyncSemaphore, throttle


@pytest.mark.asyncio
async def test_async_semaphore_with_pytest_asyncio() -> None:
    sem = AsyncSemaphore(2)
    current = peak = 0

    @throttle(sem)
    async def call() -> None:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.001)
        current -= 1

    await asyncio.gather(*(call() for _ in range(100)))
    assert peak == 2
    assert sem.value == 2
