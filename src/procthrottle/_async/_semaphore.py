"""``AsyncSemaphore``: ``await`` a cross-process permit, with one waiter thread at most."""

from __future__ import annotations

import inspect
import sys
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_timeout
from .._typing import Self
from ._core import Core, core_for
from ._wakeup import _sniffed


@runtime_checkable
class SyncSemaphore(Protocol):
    """Anything with ``acquire(block, timeout)`` and ``release()``: ProcessSemaphore,
    ``multiprocessing.Semaphore``, ``threading.Semaphore``, ``RedisSemaphore``..."""

    def acquire(self, block: bool = ..., timeout: float | None = ...) -> bool: ...
    def release(self) -> None: ...


def _check_sync_semaphore(sem: object) -> None:
    """Refuse look-alikes whose ``acquire`` is async or takes no (block, timeout)."""
    acquire = sem.acquire  # type: ignore[attr-defined]
    if inspect.iscoroutinefunction(acquire) or inspect.iscoroutinefunction(
        getattr(sem, "release", None)
    ):
        raise TypeError(
            f"semaphore must be a synchronous semaphore (a ProcessSemaphore, or an object with "
            f"a blocking acquire(block, timeout) and release()); {type(sem).__name__} is "
            "already async: use it directly, or pass a ProcessSemaphore or an int limit"
        )
    try:
        signature = inspect.signature(acquire)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(False, None)
    except TypeError:
        raise TypeError(
            f"semaphore must have acquire(block, timeout); {type(sem).__name__}.acquire"
            f"{signature} does not take them. Pass a ProcessSemaphore or an int limit"
        ) from None


class AsyncSemaphore:
    """Await permits of a process semaphore from asyncio or trio.

    * **Fast path**: an uncontended ``acquire`` takes the permit with a non-blocking call on the
      event loop's thread: no thread hop (on trio it is still a checkpoint).
    * **Local gate**: in front of the kernel sits an in-process FIFO gate with ``limit`` slots,
      so however many tasks of this process wait, at most ``limit`` of them contend for the
      kernel; the rest wait in the gate, like tasks on an ``asyncio.Semaphore``.
    * **One waiter thread per semaphore per process**, shared by every `AsyncSemaphore` and
      ``@throttle`` over the same semaphore object: tasks that passed the gate but found no
      free permit queue up, and the thread blocks in the kernel (keeping its place in the
      kernel's FIFO, like a blocked thread) and hands each permit to the first task still
      waiting, on that task's own loop.
    * **Fair across processes**: release returns the kernel permit to the kernel first, and the
      waiter thread never re-queues, so waiters of other processes get turns in proportion.
    * **Errors reach the waiters**: if the semaphore is closed or unlinked, or the backend
      fails while tasks wait, they raise that error; a later acquire works once it is fixed.
    * **No leaks**: a task cancelled or timed out holds nothing; a permit granted at the moment
      it was cancelled is passed to the next waiter or returned to the semaphore. Waiters whose
      event loop was closed are skipped.

    Args:
        semaphore: A `ProcessSemaphore`, an `int` limit (a new anonymous `ProcessSemaphore`), or
            any object with a blocking ``acquire(block, timeout)`` and ``release()``.

    Raises:
        TypeError: ``semaphore`` is none of those (an ``asyncio.Semaphore`` is refused too).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # A semaphore with an async adapter of its own gets that one: a `RedisSemaphore`'s
        # waiters queue in the server and are woken by its pushes, where this generic adapter
        # could only poll with non-blocking tries, which never win a place in that queue.
        if cls is AsyncSemaphore and args:
            native = getattr(type(args[0]), "_procthrottle_async_type", None)
            if native is not None:
                adapter_type: type[Self] = native()
                return super().__new__(adapter_type)
        return super().__new__(cls)

    def __init__(self, semaphore: ProcessSemaphore | SyncSemaphore | int) -> None:
        sem: ProcessSemaphore | SyncSemaphore
        if isinstance(semaphore, int) and not isinstance(semaphore, bool):
            sem = ProcessSemaphore(semaphore)
        elif isinstance(semaphore, ProcessSemaphore):
            sem = semaphore
        elif isinstance(semaphore, SyncSemaphore):
            _check_sync_semaphore(semaphore)
            sem = semaphore
        else:
            raise TypeError(
                "semaphore must be an int limit, a ProcessSemaphore, or an object with "
                f"acquire(block, timeout) and release(), not {type(semaphore).__name__}"
            )
        self._sem = sem
        limit = getattr(sem, "limit", None)
        self._limit: int | None = limit if isinstance(limit, int) else None
        self._core: Core = core_for(sem, self._limit)

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
        """Take a permit without blocking the event loop.

        On trio this is always a checkpoint: it raises ``Cancelled`` in a cancelled scope even
        when a permit is free. On asyncio an uncontended acquire does not yield, like
        ``asyncio.Semaphore``.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            True when a permit was taken, False when ``timeout`` passed first.

        Raises:
            SemaphoreClosedError: The semaphore was closed or unlinked (also while waiting).
            ValueError: ``timeout`` is NaN.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        if _sniffed.name == "trio":
            return await self._acquire_on_trio(timeout)
        core = self._core
        if not core.gate and core.fast:  # nobody of ours queues: try the fast path
            try:
                core.slots.pop()
            except IndexError:
                pass
            else:
                try:
                    if self._sem.acquire(False):
                        core.held.append(None)
                        return True
                except BaseException:
                    core.return_slot()
                    raise
                if timeout is None:
                    return await core.acquire_slow(True, self._sem) > 0
                return await core.wait(True, timeout, self._sem) > 0
        if timeout is None:
            return await core.acquire_slow(False, self._sem) > 0
        return await core.wait(False, timeout, self._sem) > 0

    async def _acquire_on_trio(self, timeout: float | None) -> bool:
        lowlevel = sys.modules["trio"].lowlevel
        await lowlevel.checkpoint_if_cancelled()
        core = self._core
        slot = False
        if not core.gate and core.fast:
            try:
                core.slots.pop()
                slot = True
            except IndexError:
                pass
            else:
                try:
                    got = self._sem.acquire(False)
                except BaseException:
                    core.return_slot()
                    raise
                if got:
                    core.held.append(None)
                    await lowlevel.cancel_shielded_checkpoint()
                    return True
        outcome = await core.wait(slot, timeout, self._sem)
        if outcome < 2:
            await lowlevel.cancel_shielded_checkpoint()  # it did not yield
        return outcome > 0

    def release(self) -> None:
        """Return the permit to the semaphore and let the next local task through the gate.

        The kernel permit goes back to the kernel first, so waiters in other processes get
        their turn; the local slot then goes to the next task of this process.

        Raises:
            ValueError: The permit would raise the value above the limit, or this process
                holds none (what the wrapped semaphore's ``release`` raises).
            SemaphoreClosedError: The wrapped semaphore was closed or unlinked.
        """
        self._core.release(self._sem)

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

    def _waiter_thread_starts(self) -> int:
        """How many waiter threads this semaphore's core started so far (for tests)."""
        return self._core.starts

    def _debug_state(self) -> dict[str, Any]:
        core = self._core
        return {"gate": len(core.gate), "queue": len(core.queue), "thread": core.thread}

# What `inspect.signature(AsyncSemaphore)` (and so the reference) shows: the arguments of
# __init__, not the catch-all ones of the __new__ that picks a semaphore's own adapter.
AsyncSemaphore.__new__.__signature__ = inspect.signature(AsyncSemaphore.__init__)  # type: ignore[attr-defined]
