"""The machinery behind `AsyncSemaphore`: a local gate and one shared waiter thread.

There is one `Core` per kernel semaphore per process, shared by every `AsyncSemaphore` and
every ``@throttle`` decoration over it (`core_for`), whichever handle object each wraps (30
``ProcessSemaphore(1, name=N)`` objects are one kernel semaphore), so however many adapters
exist, one thread at most waits in the kernel for this process. Each task calls the kernel
through its own adapter's handle; the waiter thread waits through the handle of the first task
in its queue, and a handle's ``close()`` fails only the tasks that came through it.

* **The gate**: ``limit`` slots (tokens in a list: ``list.pop``/``append`` are atomic, so the
  fast path takes no lock) and a FIFO of tasks waiting for one.
* **The kernel queue**: tasks that hold a slot but found no free permit (other processes hold
  them). The waiter thread blocks in the kernel *without a timeout* while anyone queues, so it
  keeps its place in the kernel's own FIFO like any blocked thread; a permit it gets after
  everyone left is handed back at once. Between waits it idles for `KEEPALIVE` seconds before
  it exits, so a busy ping-pong does not start a thread per acquisition.
* **Errors**: whatever the thread meets (the semaphore closed or unlinked, a backend error) is
  handed to every task in the kernel queue, which raises it; the thread carries on, so the
  adapter works again once the cause is gone.
* **Cancellation** marks a waiter GONE in O(1); queues skip and compact GONE entries lazily.
* **Offload**: a semaphore whose calls do network I/O (``RedisSemaphore``) is never called on
  the loop's thread: the waiter thread polls it and makes its releases too.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import deque
from collections.abc import Hashable
from typing import Any, SupportsIndex

import anyio

from .._exceptions import SemaphoreClosedError
from .._kernel._semaphore import ProcessSemaphore, on_close
from ._kernel_peek import kernel_waiters_counter
from ._waiter_thread import WaiterThread
from ._wakeup import FAILED, GONE, GRANTED, WAITING, Waiter, new_waiter

_COMPACT_AT = 64


class _Ungated(list[None]):
    """The slots of a semaphore whose limit is unknown: always one more."""

    def pop(self, index: SupportsIndex = -1) -> None:
        return None

    def append(self, item: None) -> None:
        return None


class Core(WaiterThread):
    """Gate, kernel queue and waiter thread of one wrapped semaphore in this process."""

    def __init__(self, sem: Any, limit: int | None, *, offload: bool) -> None:
        self.sem = sem
        self.limit = limit
        self.try_acquire = sem.acquire
        self.kernel_release = sem.release
        #: False: never call the semaphore on the loop's thread (no fast path).
        self.fast = not offload
        #: How many threads of any process are blocked in the kernel for a permit, if the
        #: kernel can tell (None: it cannot, so permits always go back to the kernel).
        self.blocked = kernel_waiters_counter(sem)
        self.reset()

    def reset(self) -> None:
        """Fresh state (also in a forked child, where no thread survived)."""
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.slots: list[None] = [None] * self.limit if self.limit else _Ungated()
        #: One token per permit taken through an adapter of this core and not yet released:
        #: only those may be handed over without asking the kernel.
        self.held: list[None] = []
        self.gate: deque[Waiter] = deque()
        self.gate_gone = 0
        self.queue: deque[Waiter] = deque()
        self.queue_gone = 0
        self.thread: threading.Thread | None = None
        self.releases = 0  # offload: releases the thread still has to make
        self.poll_delay = 0.001
        self.starts = 0  # waiter threads started (for tests)

    # -- the gate ------------------------------------------------------------------------------
    def return_slot(self) -> None:
        self.slots.append(None)
        if self.gate:  # checked after the append: see acquire_slow
            self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to queued tasks, first come first served; skip dead loops."""
        lock, slots = self.lock, self.slots
        while True:
            with lock:
                gate = self.gate
                while gate and gate[0].state != WAITING:
                    gate.popleft()
                    self.gate_gone -= 1
                if not gate or not slots:
                    return
                try:
                    slots.pop()
                except IndexError:  # a fast path on another thread took it
                    return
                waiter = gate.popleft()
                waiter.state = GRANTED
            if not waiter.wake():  # its loop is closed: the slot goes to the next one
                self._forget(waiter)
                slots.append(None)

    def release(self, sem: Any = None) -> None:
        """Give back a permit and its slot (`AsyncSemaphore.release`, through its ``sem``)."""
        if sem is None:
            sem = self.sem
        held = self.held
        try:
            held.pop()
        except IndexError:  # not acquired through an adapter: only the kernel may judge it
            mine = False
        else:
            mine = True
            # our own kernel queue goes first: its tasks hold slots and came before the gate's
            if self.gate and not self.queue and self.blocked is not None and self._hand_over():
                return
        try:
            if self.fast:
                sem.release()
            else:
                self.release_permit(sem)
        except SemaphoreClosedError:
            # Closed or unlinked: the permit went with the handle, but its slot goes on, so
            # that the tasks waiting at the gate reach the kernel and hear the same error.
            if mine:
                self.return_slot()
            raise
        except BaseException:
            if mine:
                held.append(None)
            raise
        self.return_slot()

    def _hand_over(self) -> bool:
        """If no thread of any process is blocked in the kernel for a permit, give ours (with
        its slot) straight to the next task of this process: nobody else queues for it, and it
        saves a kernel release and acquire. Whoever blocks meanwhile is served next time."""
        blocked = self.blocked
        while True:
            if blocked is None or blocked(self.sem) != 0:
                return False
            with self.lock:
                gate = self.gate
                while gate and gate[0].state != WAITING:
                    gate.popleft()
                    self.gate_gone -= 1
                if not gate:
                    return False
                waiter = gate.popleft()
                waiter.state = GRANTED
                waiter.permit = True
            if waiter.wake():
                return True
            self._forget(waiter)  # its loop is closed: try the next task

    async def acquire_slow(self, slot: bool, sem: Any = None) -> int:
        """The slow path of acquire: a slot (unless ``slot``), then a kernel permit through
        ``sem`` (the adapter's handle).

        Returns 1 (acquired without yielding) or 2 (acquired after waiting).
        """
        if sem is None:
            sem = self.sem
        waited = False
        if not slot:
            waiter = None
            with self.lock:
                # A release returns its slot without the lock, then looks at the gate. So look
                # for a slot both before and after queueing: either we see it, or it sees us.
                slots = self.slots
                try:
                    if not slots:
                        raise IndexError
                    slots.pop()
                except IndexError:
                    waiter = new_waiter()
                    self.gate.append(waiter)
                    if slots:
                        try:
                            slots.pop()
                        except IndexError:
                            pass
                        else:
                            self.gate.pop()  # we are last: only this lock's holders append
                            waiter = None
            if waiter is not None:
                try:
                    await waiter.wait()
                except BaseException:
                    if self.withdraw(waiter, True) == GRANTED:  # granted as we were cancelled
                        if waiter.permit:  # a permit, handed over: it is ours to pass on
                            self.held.append(None)
                            self.release(sem)
                        else:
                            self.return_slot()
                    raise
                if waiter.permit:  # handed over with a kernel permit
                    self.held.append(None)
                    return 2
                waited = True
        try:
            if not (self.fast and sem.acquire(False)):
                await self.wait_for_kernel(sem)
                waited = True
        except BaseException:
            self.return_slot()
            raise
        self.held.append(None)
        return 2 if waited else 1

    async def wait_for_kernel(self, sem: Any) -> None:
        """Queue up for a kernel permit from the waiter thread."""
        waiter = new_waiter()
        waiter.sem = sem
        with self.lock:
            self.queue.append(waiter)
            try:
                self._ensure_thread()
            except BaseException:
                self.queue.pop()  # we are last: only this lock's holders append
                raise
        try:
            await waiter.wait()
        except BaseException:
            if self.withdraw(waiter, False) == GRANTED:
                self.release_permit(sem)  # granted as we were cancelled: pass it on
            raise
        if waiter.state == FAILED:
            waiter.raise_error()

    def _forget(self, waiter: Waiter) -> None:
        """A granted waiter whose loop is gone: if its coroutine is ever closed, it must not
        pass on the grant a second time."""
        with self.lock:
            waiter.state = GONE
            waiter.permit = False

    def withdraw(self, waiter: Waiter, in_gate: bool) -> int:
        """Leave a queue after a cancellation, in O(1); returns the state it had."""
        with self.lock:
            state = waiter.state
            if state != WAITING:
                return state
            waiter.state = GONE
            if in_gate:
                self.gate_gone += 1
                if self.gate_gone > _COMPACT_AT and 2 * self.gate_gone > len(self.gate):
                    self.gate = deque(w for w in self.gate if w.state == WAITING)
                    self.gate_gone = 0
            else:
                self.queue_gone += 1
                if self.queue_gone > _COMPACT_AT and 2 * self.queue_gone > len(self.queue):
                    self.queue = deque(w for w in self.queue if w.state == WAITING)
                    self.queue_gone = 0
            return WAITING

    def release_permit(self, sem: Any = None) -> None:
        """Return one kernel permit: here, or through the thread for an offloaded semaphore."""
        if self.fast:
            (self.sem if sem is None else sem).release()
            return
        with self.lock:
            self.releases += 1
            try:
                self._ensure_thread()
                return
            except BaseException:
                self.releases -= 1
        self.kernel_release()  # no thread to be had: better late on this thread than never

    async def wait(self, slot: bool, timeout: float | None, sem: Any = None) -> int:
        """`acquire_slow` within ``timeout``; 0 if it passed first."""
        if timeout is None:
            return await self.acquire_slow(slot, sem)
        if timeout <= 0:
            if slot:
                self.return_slot()
            return 0
        with anyio.move_on_after(timeout):
            return await self.acquire_slow(slot, sem)
        return 0  # timed out (the caller's own cancellation propagates instead)


def _closed(key: Hashable, sem_ref: weakref.ref[Any]) -> None:
    """A handle was closed in this process: its tasks in the kernel queue hear it now.

    The waiter thread may stay blocked in the kernel until a permit comes (it gives that back
    at once); the tasks need not wait for that. Tasks that came through other handles of the
    same kernel semaphore carry on.
    """
    core = _cores.get(key)
    sem = sem_ref()
    if core is not None and sem is not None:
        core._fail(SemaphoreClosedError("the semaphore was closed in this process"), sem)


def _identity(sem: Any) -> Hashable:
    """What makes two handles one kernel semaphore: a System V set's id, else the object."""
    semid = getattr(sem, "_semid", None)
    if isinstance(sem, ProcessSemaphore) and isinstance(semid, int):
        return ("sysv", semid)
    return ("object", id(sem))


# By kernel identity (or id(): a core holds its first semaphore, so that id cannot be reused
# while the core lives); the core lives as long as an adapter (or its thread) uses it.
_cores: weakref.WeakValueDictionary[Hashable, Core] = weakref.WeakValueDictionary()
_cores_lock = threading.Lock()
#: Semaphores whose close() the cores listen for: once each, however many cores come and go.
_listening: weakref.WeakSet[Any] = weakref.WeakSet()


def core_for(sem: Any, limit: int | None) -> Core:
    """The one core of ``sem``'s kernel semaphore in this process, shared by every adapter
    over it (through this handle or another of the same semaphore)."""
    with _cores_lock:
        key = _identity(sem)
        core = _cores.get(key)
        if core is None:
            offload = bool(getattr(sem, "_procthrottle_offload", False))
            core = _cores[key] = Core(sem, limit, offload=offload)
        # a task waiting in the kernel queue must not outwait its handle's close()
        if isinstance(sem, ProcessSemaphore) and sem not in _listening:
            _listening.add(sem)
            on_close(sem, functools.partial(_closed, key, weakref.ref(sem)))
        return core


def _after_fork_in_child() -> None:
    global _cores_lock
    _cores_lock = threading.Lock()
    for core in list(_cores.values()):
        core.reset()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
