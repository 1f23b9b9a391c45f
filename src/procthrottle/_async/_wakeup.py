"""Wake a task on its own event loop from any thread, on asyncio or trio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import anyio

Schedule = Callable[[Callable[[], None]], object]


def current_scheduler() -> Schedule:
    """A thread-safe ``call_soon`` for the running event loop."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio  # the only other anyio backend

        return trio.lowlevel.current_trio_token().run_sync_soon


class Waiter:
    """One task waiting for a local slot or a kernel permit.

    ``state`` moves WAITING -> GRANTED (by whoever hands it something) or WAITING -> GONE (by
    the task itself when cancelled or timed out), always under the semaphore's lock, so a grant
    and a cancellation can never both win.
    """

    WAITING, GRANTED, GONE = 0, 1, 2
    __slots__ = ("event", "schedule", "state", "thread")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.schedule = current_scheduler()
        self.thread = threading.get_ident()
        self.state = Waiter.WAITING

    def wake(self) -> bool:
        """Set the event on the waiter's loop; False if that loop is gone."""
        if threading.get_ident() == self.thread:
            self.event.set()
            return True
        try:
            self.schedule(self.event.set)
        except RuntimeError:  # its loop was closed
            return False
        return True
