"""The pool's futures, and awaiting a ``concurrent.futures.Future`` from asyncio or trio."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED
from typing import Any, Protocol, TypeVar

from .._async._wakeup import new_waiter

T = TypeVar("T")

#: Where ``Future`` itself logs a callback's error: the same place for ours.
logger = logging.getLogger("concurrent.futures")


#: The name of every pool's manager thread (the thread that resolves futures with results).
MANAGER_THREAD = "procthrottle-pool"


class _Canceller(Protocol):
    def cancel_task(self, future: TaskFuture[Any]) -> bool: ...
    def task_started(self, future: TaskFuture[Any]) -> bool: ...


class TaskFuture(Future[T]):
    """A ``Future`` that is RUNNING only once its task started on a worker.

    A task may already sit in a worker's queue; ``cancel()`` asks the pool to revoke it there,
    and succeeds exactly when the worker has not claimed it.
    """

    def __init__(self, owner: _Canceller) -> None:
        super().__init__()
        self._owner: _Canceller | None = owner
        self._task: Any = None

    def cancel(self) -> bool:
        if self._state == "FINISHED":  # fast path: map() cancels every future it leaves
            return False
        owner = self._owner
        if owner is None:
            return cancel_and_notify(self)
        return owner.cancel_task(self)

    def _invoke_callbacks(self) -> None:
        """Run every done-callback, as ``Future`` does, but contain any ``BaseException``.

        ``Future`` logs an ``Exception`` from a callback and goes on, but a ``SystemExit`` (or
        any other ``BaseException``) escapes and skips the later callbacks. On the pool's
        manager thread that would strand every future it holds, so there it is logged like an
        ``Exception``. In the caller's own thread (``cancel()``), every callback still runs,
        and the first such error is raised afterwards, as the caller would expect."""
        raised: BaseException | None = None
        manager = threading.current_thread().name == MANAGER_THREAD
        for callback in self._done_callbacks:  # type: ignore[attr-defined]
            try:
                callback(self)
            except BaseException as exc:
                if isinstance(exc, Exception) or manager:
                    logger.exception("exception calling callback for %r", self)
                elif raised is None:
                    raised = exc
        if raised is not None:
            try:
                raise raised
            finally:
                raised = None

    def running(self) -> bool:
        owner = self._owner
        if super().running():
            return True
        return owner is not None and not self.done() and owner.task_started(self)


def cancel_and_notify(future: Future[Any]) -> bool:
    """``Future.cancel()``, then tell the waiters of ``concurrent.futures.wait()`` and
    ``as_completed()``, as ``set_running_or_notify_cancel()`` does: ``cancel()`` alone only
    wakes ``result()`` and runs the callbacks, so a cancelled future would never be "done" for
    them. Safe against a second, racing cancel (the future's condition is reentrant)."""
    if not Future.cancel(future):
        return False
    with future._condition:
        if future._state == CANCELLED:  # not yet notified
            future.set_running_or_notify_cancel()
    return True


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
