"""``AsyncSemaphore``: ``await`` a cross-process permit, with one waiter thread at most."""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_timeout
from .._typing import Self
from ._wakeup import Waiter

#: How long the waiter thread blocks in the kernel before it checks whether anyone still waits.
POLL_INTERVAL = 0.1


@runtime_checkable
class SyncSemaphore(Protocol):
    """Anything with ``acquire(block, timeout)`` and ``release()``: ProcessSemaphore,
    ``multiprocessing.Semaphore``, ``threading.Semaphore``, ``RedisSemaphore``..."""

    def acquire(self, block: bool = ..., timeout: float | None = ...) -> bool: ...
    def release(self) -> None: ...


_live: weakref.WeakSet[AsyncSemaphore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sem in list(_live):
        sem._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncSemaphore:
    """Await permits of a process semaphore from asyncio or trio.

    * **Fast path**: an uncontended ``acquire`` takes the permit with a non-blocking call on the
      event loop's thread: no thread hop.
    * **Local gate**: in front of the kernel sits an in-process FIFO gate with ``limit`` slots,
      so however many tasks of this process wait, at most ``limit`` of them contend for the
      kernel; the rest wait in the gate, like tasks on an ``asyncio.Semaphore``.
    * **One waiter thread**: tasks that passed the gate but found no free permit (other
      processes hold them) queue up; a single daemon thread per ``AsyncSemaphore`` blocks in the
      kernel and hands each permit it gets to the first task still waiting, on that task's own
      loop. It exits when nobody waits.
    * **No leaks**: a task cancelled or timed out holds nothing; a permit granted at the moment
      it was cancelled is passed to the next waiter or returned to the semaphore.

    Release hands the local slot to the next task of this process but always returns the kernel
    permit to the kernel first, so waiters in other processes get their fair turn.
    """

    def __init__(self, semaphore: ProcessSemaphore | SyncSemaphore | int) -> None:
        sem: ProcessSemaphore | SyncSemaphore
        if isinstance(semaphore, int) and not isinstance(semaphore, bool):
            sem = ProcessSemaphore(semaphore)
        elif isinstance(semaphore, ProcessSemaphore | SyncSemaphore):
            sem = semaphore
        else:
            raise TypeError(
                "semaphore must be an int limit, a ProcessSemaphore, or an object with "
                f"acquire(block, timeout) and release(), not {type(semaphore).__name__}"
            )
        self._sem = sem
        limit = getattr(sem, "limit", None)
        self._limit: int | None = limit if isinstance(limit, int) else None
        self._try = sem.acquire
        self._kernel_release = sem.release
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # Unknown limit (a foreign semaphore): no gate, every task contends for the kernel.
        self._slots = self._limit if self._limit is not None else 2**62
        self._gate: deque[Waiter] = deque()
        self._kernel_waiters: deque[Waiter] = deque()
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------
    @property
    def semaphore(self) -> ProcessSemaphore | SyncSemaphore:
        """The wrapped semaphore."""
        return self._sem

    @property
    def limit(self) -> int | None:
        """The wrapped semaphore's limit (None if it does not say)."""
        return self._limit

    @property
    def value(self) -> int | None:
        """Free permits of the wrapped semaphore now, if it can tell."""
        sem = self._sem
        for attr in ("value", "get_value", "_value"):
            value = getattr(sem, attr, None)
            if callable(value):
                try:
                    value = value()
                except NotImplementedError:  # macOS multiprocessing
                    return None
            if isinstance(value, int):
                return value
        return None

    async def acquire(self, *, timeout: float | None = None) -> bool:
        """Take a permit; False if ``timeout`` seconds passed first. Never blocks the loop."""
        timeout = check_timeout(timeout)
        with self._lock:
            slot = self._slots > 0 and not self._gate
            if slot:
                self._slots -= 1
        if slot and self._try(False):
            return True
        if timeout is not None and timeout <= 0:
            if slot:
                self._give_slot()
            return False
        with anyio.move_on_after(timeout):
            if not slot:
                await self._wait(self._gate)
            if self._try(False):
                return True
            await self._wait(self._kernel_waiters, start_thread=True)
            return True
        # timed out (cancellation of the caller propagates from _wait instead)
        return False

    def release(self) -> None:
        """Return the permit to the semaphore and let the next local task through the gate."""
        self._kernel_release()
        self._give_slot()

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"AsyncSemaphore({self._sem!r})"

    # -- the machinery -----------------------------------------------------------------------
    async def _wait(self, queue: deque[Waiter], *, start_thread: bool = False) -> None:
        """Queue up and wait for a grant; on cancellation give back whatever was granted."""
        waiter = Waiter()
        with self._lock:
            queue.append(waiter)
            if start_thread and self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="procthrottle-waiter", daemon=True
                )
                self._thread.start()
        try:
            await waiter.event.wait()
        except BaseException:
            with self._lock:
                granted = waiter.state == Waiter.GRANTED
                waiter.state = Waiter.GONE
            if granted:  # handed to us as we were cancelled: pass it on
                if queue is self._gate:
                    self._give_slot()
                else:
                    self.release()
            elif queue is self._kernel_waiters:
                self._give_slot()  # we held a gate slot while waiting for the kernel
            raise

    def _grant_first(self, queue: deque[Waiter]) -> Waiter | None:
        """Mark the first live waiter GRANTED (caller holds the lock)."""
        while queue:
            waiter = queue.popleft()
            if waiter.state == Waiter.WAITING:
                waiter.state = Waiter.GRANTED
                return waiter
        return None

    def _give_slot(self) -> None:
        """A gate slot is free: hand it to the next local task, or put it back."""
        while True:
            with self._lock:
                waiter = self._grant_first(self._gate)
                if waiter is None:
                    self._slots += 1
                    return
            if waiter.wake():
                return
            # its loop is gone: the slot is free again, try the next waiter

    def _serve(self) -> None:
        """The waiter thread: take kernel permits for queued tasks, one at a time."""
        while True:
            with self._lock:
                while self._kernel_waiters and self._kernel_waiters[0].state != Waiter.WAITING:
                    self._kernel_waiters.popleft()
                if not self._kernel_waiters:
                    self._thread = None
                    return
            if not self._sem.acquire(True, POLL_INTERVAL):
                continue
            with self._lock:
                waiter = self._grant_first(self._kernel_waiters)
            if waiter is None:
                self._kernel_release()  # everyone left meanwhile
            elif not waiter.wake():
                self.release()  # its loop is gone: permit and slot go on
