"""The waiter thread of a `Core`: it waits in the kernel for the tasks of its process.

While anyone queues it blocks in the kernel *without a timeout*, keeping its place in the
kernel's FIFO like any blocked thread; a permit it gets after everyone left is handed back.
Whatever it meets (the semaphore closed, a backend error) is delivered to every task in its
queue. Between waits it idles for `KEEPALIVE` seconds, holding its core only weakly.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._wakeup import FAILED, GRANTED, WAITING, Waiter

if TYPE_CHECKING:
    from ._core import Core

log = logging.getLogger("procthrottle")

#: Seconds the waiter thread stays alive, idle, after the last task it served.
KEEPALIVE = 0.5
#: Offloaded (network) semaphores: the waiter thread polls with a backoff up to this.
MAX_POLL = 0.05


class WaiterThread:
    """The part of `Core` that runs on (or starts) the waiter thread."""

    sem: Any
    fast: bool
    lock: threading.Lock
    cond: threading.Condition
    queue: deque[Waiter]
    queue_gone: int
    thread: threading.Thread | None
    releases: int
    poll_delay: float
    starts: int

    try_acquire: Callable[..., bool]
    kernel_release: Callable[[], None]

    def return_slot(self) -> None:
        raise NotImplementedError  # pragma: no cover - Core's

    def _forget(self, waiter: Waiter) -> None:
        raise NotImplementedError  # pragma: no cover - Core's

    def _ensure_thread(self) -> None:
        """Under the lock: wake the waiter thread, or start it if there is none."""
        if self.thread is not None:
            self.cond.notify()  # idle, or polling an offloaded semaphore: look again now
            return
        thread = threading.Thread(
            target=_serve, args=(weakref.ref(self),), name="procthrottle-waiter", daemon=True
        )
        thread.start()  # raises (e.g. RuntimeError under a pids limit): nothing recorded
        self.thread = thread
        self.starts += 1

    def _next_waiter(self) -> Waiter | None:
        """Under the lock: the first task still waiting for a permit, removed from the queue."""
        queue = self.queue
        while queue:
            waiter = queue.popleft()
            if waiter.state == WAITING:
                return waiter
            self.queue_gone -= 1
        return None

    def _has_work(self) -> bool:
        queue = self.queue
        while queue and queue[0].state != WAITING:
            queue.popleft()
            self.queue_gone -= 1
        return bool(queue) or self.releases > 0

    def _serve_once(self) -> bool:
        """One round of the waiter thread; False when there is nothing to do."""
        with self.lock:
            if not self._has_work():
                return False
            releases, self.releases = self.releases, 0
        for _ in range(releases):
            try:
                self.kernel_release()
            except Exception as exc:
                log.warning("could not release a permit of %r: %s", self.sem, exc)
        with self.lock:
            if not self.queue:
                return True
            # every handle in the queue is one of the same kernel semaphore: wait through the
            # first task's (the others' close() does not concern it)
            sem = self.queue[0].sem
            if sem is None:
                sem = self.sem
        try:
            # Fair: no timeout, so this thread keeps its place in the kernel's queue.
            # `acquire(True)`, block alone: every blocking semaphore takes it (threading.Lock
            # refuses timeout=None), and it waits as long as it takes
            got = sem.acquire(True) if self.fast else self.try_acquire(False)
        except BaseException as exc:
            self._fail(exc, sem)
            return True
        if not got:  # an offloaded semaphore is busy: poll again soon
            with self.lock:
                if not self.releases:
                    self.cond.wait(self.poll_delay)
            self.poll_delay = min(self.poll_delay * 1.5, MAX_POLL)
            return True
        self.poll_delay = 0.001
        self._grant(sem)
        return True

    def _grant(self, sem: Any) -> None:
        """Hand the permit the thread got to the first task still waiting, or give it back."""
        while True:
            with self.lock:
                waiter = self._next_waiter()
                if waiter is not None:
                    waiter.state = GRANTED
            if waiter is None:  # everyone left meanwhile: hand it back
                try:
                    sem.release() if self.fast else self.kernel_release()
                except Exception as exc:
                    log.warning("could not release a permit of %r: %s", self.sem, exc)
                return
            if waiter.wake():
                return
            # its loop is closed: it will never return the slot it holds, so do it for it, and
            # try the next task with the permit
            self._forget(waiter)
            self.return_slot()

    def _fail(self, exc: BaseException, sem: Any = None) -> None:
        """Deliver the thread's error to every task waiting for a permit (``sem``: only to
        those that came through that handle, whose error it is)."""
        with self.lock:
            failed = [
                w for w in self.queue if w.state == WAITING and (sem is None or w.sem is sem)
            ]
            if sem is None:
                self.queue.clear()
                self.queue_gone = 0
            else:
                self.queue = deque(w for w in self.queue if w.state == WAITING and w.sem is not sem)
                self.queue_gone = 0
            for waiter in failed:
                waiter.state = FAILED
                waiter.error = exc
        for waiter in failed:
            if not waiter.wake():  # its loop is closed: return the slot it holds for it
                self.return_slot()


def _serve(ref: weakref.ref[Core]) -> None:
    """The waiter thread. While idle it holds its core only weakly, so an unused semaphore
    (and its kernel object) can go away without waiting for the thread to time out."""
    core = ref()
    try:
        while core is not None:
            if core._serve_once():
                continue
            cond = core.cond
            with cond:
                if core._has_work():
                    continue
                core = None
                woken = cond.wait(KEEPALIVE)
                core = ref()
                if core is None:
                    return
                if not woken and not core._has_work():
                    core.thread = None
                    return
    except BaseException as exc:  # a bug, or the interpreter shutting down: strand nobody
        if core is not None:
            with core.lock:
                if core.thread is threading.current_thread():
                    core.thread = None
            core._fail(exc)
