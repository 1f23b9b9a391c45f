"""Wake a task on its own event loop from any thread, on asyncio or trio.

A waiter is the cheapest native primitive of its loop (an asyncio future, a trio event), not an
``anyio.Event``: the gate of `AsyncSemaphore` creates one per queued task, and that cost is what
separates it from ``asyncio.Semaphore``. Which loop runs the task is asked of ``sniffio``, so
trio in guest mode on an asyncio host gets a trio waiter.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable
from typing import Any

import sniffio

WAITING, GRANTED, GONE, FAILED = 0, 1, 2, 3

_sniffed = sniffio.thread_local
_get_ident = threading.get_ident
_get_running_loop = asyncio.get_running_loop


def on_trio() -> bool:
    """Whether the running task is a trio task (cheap: trio sets sniffio's thread-local)."""
    return _sniffed.name == "trio"


class Waiter:
    """One task waiting for a local slot or a kernel permit.

    ``state`` moves WAITING -> GRANTED (by whoever hands it something), WAITING -> FAILED (the
    waiter thread met an error, stored in ``error``) or WAITING -> GONE (by the task itself when
    cancelled or timed out), always under the semaphore's lock, so a grant and a cancellation
    can never both win.
    """

    __slots__ = ("error", "permit", "sem", "state", "thread")

    error: BaseException | None
    #: Granted a slot *with* a kernel permit (handed over by a release): no kernel call to make.
    permit: bool
    #: The handle this task came through (kernel queue only): the waiter thread may wait on
    #: it, and only its close() fails this task.
    sem: Any

    def __init__(self) -> None:
        self.state = WAITING
        self.thread = threading.get_ident()
        self.error = None
        self.permit = False
        self.sem = None

    def wait(self) -> Awaitable[Any]:
        raise NotImplementedError  # pragma: no cover

    def wake(self) -> bool:
        """Resume the task on its loop; False if that loop is gone (closed or finished)."""
        raise NotImplementedError  # pragma: no cover

    def raise_error(self) -> None:
        """Raise the waiter thread's error in the task (a copy: many tasks may get it)."""
        error = self.error
        if error is None:
            return
        try:
            fresh = copy.copy(error)
        except Exception:  # an exception that cannot be copied: share it
            fresh = error
        raise fresh from error


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled task's future is already done
        future.set_result(None)


class AsyncioWaiter(Waiter):
    __slots__ = ("future", "loop")

    future: asyncio.Future[None]

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:  # hot: no super() call
        self.state = WAITING
        self.thread = _get_ident()
        self.error = None
        self.permit = False
        self.loop = loop
        self.future = loop.create_future()

    def wait(self) -> Awaitable[Any]:
        return self.future

    def wake(self) -> bool:
        loop = self.loop
        if loop.is_closed():
            return False
        if _get_ident() == self.thread:
            _resolve(self.future)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop was closed meanwhile
            return False
        return True


class TrioWaiter(Waiter):
    __slots__ = ("event", "token")

    def __init__(self) -> None:
        import trio

        super().__init__()
        self.event = trio.Event()
        self.token = trio.lowlevel.current_trio_token()

    def wait(self) -> Awaitable[Any]:
        return self.event.wait()

    def wake(self) -> bool:
        if threading.get_ident() == self.thread and _sniffed.name == "trio":
            import trio

            try:
                same_run = trio.lowlevel.current_trio_token() is self.token
            except RuntimeError:
                same_run = False
            if same_run:  # a release in the same trio run: no round trip through the token
                self.event.set()
                return True
        try:
            self.token.run_sync_soon(self.event.set)
        except RuntimeError:  # trio.RunFinishedError: the run is over
            return False
        return True


def new_waiter() -> Waiter:
    """A waiter for the running task, on the loop sniffio says runs it."""
    if _sniffed.name == "trio":
        return TrioWaiter()
    try:
        loop = _get_running_loop()
    except RuntimeError:
        if sniffio.current_async_library() == "trio":
            return TrioWaiter()
        raise
    return AsyncioWaiter(loop)
