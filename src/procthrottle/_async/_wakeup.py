"""Wake a task on its own event loop from any thread, on asyncio or trio.

A waiter is the cheapest native primitive of its loop (an asyncio future, a trio event), not an
``anyio.Event``: the gate of :class:`AsyncSemaphore` creates one per queued task, and that cost
is what separates it from ``asyncio.Semaphore``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any

WAITING, GRANTED, GONE = 0, 1, 2


class Waiter:
    """One task waiting for a local slot or a kernel permit.

    ``state`` moves WAITING -> GRANTED (by whoever hands it something) or WAITING -> GONE (by
    the task itself when cancelled or timed out), always under the semaphore's lock, so a grant
    and a cancellation can never both win.
    """

    __slots__ = ("state", "thread")

    def __init__(self) -> None:
        self.state = WAITING
        self.thread = threading.get_ident()

    def wait(self) -> Awaitable[Any]:
        raise NotImplementedError  # pragma: no cover

    def wake(self) -> bool:
        """Resume the task on its loop; False if that loop is gone."""
        raise NotImplementedError  # pragma: no cover


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled task's future is already done
        future.set_result(None)


class AsyncioWaiter(Waiter):
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wait(self) -> Awaitable[Any]:
        return self.future

    def wake(self) -> bool:
        if threading.get_ident() == self.thread:
            _resolve(self.future)
            return True
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop was closed
            return False
        return True


class TrioWaiter(Waiter):
    __slots__ = ("event", "token")

    def __init__(self) -> None:
        import trio  # the only other anyio backend

        super().__init__()
        self.event = trio.Event()
        self.token = trio.lowlevel.current_trio_token()

    def wait(self) -> Awaitable[Any]:
        return self.event.wait()

    def wake(self) -> bool:
        if threading.get_ident() == self.thread:
            self.event.set()
            return True
        try:
            self.token.run_sync_soon(self.event.set)
        except RuntimeError:  # trio.RunFinishedError: the run is over
            return False
        return True


def new_waiter() -> Waiter:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return TrioWaiter()
    return AsyncioWaiter(loop)
