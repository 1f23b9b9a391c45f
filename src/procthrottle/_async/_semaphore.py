"""``AsyncSemaphore``: ``await`` a cross-process permit, with one waiter thread at most."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import deque
from types import TracebackType
from typing import Protocol, SupportsIndex, runtime_checkable

import anyio

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_timeout
from .._typing import Self
from ._wakeup import GONE, GRANTED, Waiter, new_waiter

#: How long the waiter thread blocks in the kernel before it checks whether anyone still waits.
POLL_INTERVAL = 0.1
_NO_SCOPE = contextlib.nullcontext()


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


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
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
        # The gate's free slots, one token each: list.pop/append are atomic, so the fast path
        # takes and returns a slot without the lock. A foreign semaphore of unknown limit is
        # not gated: every task contends for the kernel.
        self._slots: list[None] = [None] * self._limit if self._limit else _Ungated()
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
        if timeout is not None:
            timeout = check_timeout(timeout)
        slot = False
        if not self._gate:  # nobody of ours queues: try the fast path
            try:
                self._slots.pop()
                slot = True
            except IndexError:
                pass
            if slot and self._try(False):
                return True
        if timeout is not None and timeout <= 0:
            if slot:
                self._return_slot()
            return False
        # No cancel scope without a timeout: it would cost more than the whole wait.
        with _NO_SCOPE if timeout is None else anyio.move_on_after(timeout):
            if not slot:
                await self._wait_for_slot()
            try:
                if not self._try(False):
                    await self._wait_for_kernel()
            except BaseException:
                self._return_slot()
                raise
            return True
        return False  # timed out (the caller's own cancellation propagates instead)

    def release(self) -> None:
        """Return the permit to the semaphore and let the next local task through the gate."""
        self._kernel_release()  # first: waiters in other processes get their turn
        self._return_slot()

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
    def _return_slot(self) -> None:
        self._slots.append(None)
        if self._gate:  # checked after the append: see _wait_for_slot
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to queued tasks, first come first served."""
        woken = []
        with self._lock:
            gate, slots = self._gate, self._slots
            while gate:
                try:
                    slots.pop()
                except IndexError:
                    break
                waiter = gate.popleft()
                waiter.state = GRANTED
                woken.append(waiter)
        for waiter in woken:
            if not waiter.wake():  # its loop is gone
                self._return_slot()

    async def _wait_for_slot(self) -> None:
        waiter = new_waiter()
        with self._lock:
            # A release returns its slot without the lock, then looks at the gate. So look for a
            # slot both before and after queueing: either we see the slot, or it sees us.
            try:
                self._slots.pop()
                return
            except IndexError:
                self._gate.append(waiter)
            try:
                self._slots.pop()
            except IndexError:
                pass
            else:
                self._gate.pop()  # we are last: only this lock's holders append
                return
        try:
            await waiter.wait()
        except BaseException:
            if self._withdraw(waiter, self._gate):
                self._return_slot()  # granted as we were cancelled: pass it on
            raise

    async def _wait_for_kernel(self) -> None:
        """Queue up for a kernel permit from the waiter thread."""
        waiter = new_waiter()
        with self._lock:
            self._kernel_waiters.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="procthrottle-waiter", daemon=True
                )
                self._thread.start()
        try:
            await waiter.wait()
        except BaseException:
            if self._withdraw(waiter, self._kernel_waiters):
                self._kernel_release()  # granted as we were cancelled: pass it on
            raise

    def _withdraw(self, waiter: Waiter, queue: deque[Waiter]) -> bool:
        """Leave the queue after a cancellation; True if a grant came first."""
        with self._lock:
            if waiter.state == GRANTED:
                return True
            waiter.state = GONE
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            return False

    def _serve(self) -> None:
        """The waiter thread: take kernel permits for queued tasks, one at a time."""
        queue = self._kernel_waiters
        while True:
            with self._lock:
                if not queue:
                    self._thread = None
                    return
            if not self._sem.acquire(True, POLL_INTERVAL):
                continue
            with self._lock:
                waiter = queue.popleft() if queue else None
                if waiter is not None:
                    waiter.state = GRANTED
            if waiter is None:
                self._kernel_release()  # everyone left meanwhile
            elif not waiter.wake():
                self._kernel_release()  # its loop is gone


class _Ungated(list[None]):
    """The slots of a semaphore whose limit is unknown: always one more."""

    def pop(self, index: SupportsIndex = -1) -> None:
        return None

    def append(self, item: None) -> None:
        return None
