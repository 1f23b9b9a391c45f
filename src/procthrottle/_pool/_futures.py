"""Await a ``concurrent.futures.Future`` from asyncio or trio without a thread."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

from .._async._wakeup import new_waiter

T = TypeVar("T")


async def wait_future(future: Future[T]) -> T:
    """The future's result; cancelling the caller cancels the future if it has not started."""
    if not future.done():
        waiter = new_waiter()
        future.add_done_callback(lambda _: waiter.wake())
        try:
            await waiter.wait()
        except BaseException:
            future.cancel()
            raise
    return future.result()
