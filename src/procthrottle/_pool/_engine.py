"""The parent side of ThrottledProcessPool: the manager thread and the pool's front door.

One manager thread per pool waits (``selectors``) on every worker's result pipe, every worker's
process sentinel and a wake-up pipe, writes queued tasks to the workers' task pipes without
ever blocking, and resolves futures. Three objects do the work, each the one owner of its
state (see docs/design.md, "Process pools"):

- `Workers` (_lifecycle.py): the worker processes, their start, exit, replacement and stop;
- `Traffic` (_traffic.py): the queue and each worker's books of sequence numbers -- every seq
  sent is claimed or reclaimed there;
- `Outcomes` (_outcomes.py): how each task ended, and setting its future -- every future the
  manager touched is resolved there.

`Engine` holds what they share (the lock, the selector, the wake-up pipe, closing/broken) and
runs the manager's loop; `submit`, `cancel_task`, `shutdown` and `stats` are its calls from
the pool's users.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._kernel._semaphore import ProcessSemaphore
from . import _wire
from ._futures import MANAGER_THREAD, TaskFuture, cancel_and_notify
from ._lifecycle import Workers, interpreter_exiting, register, unregister
from ._outcomes import Outcomes
from ._records import CANCELLED, SENT, Planned, Task, Worker, earliest, logger
from ._traffic import Traffic


class Engine:
    """The parent side of one pool: see the module docstring."""

    def __init__(
        self,
        *,
        workers: int,
        semaphore: ProcessSemaphore,
        owns_semaphore: bool,
        section_mode: bool,
        context: Any,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        rate: Any,
    ) -> None:
        self.pid = os.getpid()
        self.size = workers
        self.semaphore, self.owns_semaphore = semaphore, owns_semaphore
        self.section_mode = section_mode
        self.context = context
        self.initializer, self.initargs = initializer, initargs
        self.max_tasks = max_tasks
        self.rate = rate
        self.lock = threading.RLock()
        self.closing = False  # no new tasks: finish the queue, then stop
        self.broken: BrokenProcessPool | None = None
        self.sleeping = False  # the manager waits with no timeout: submit() must wake it
        self.finished = threading.Event()
        self.selector = selectors.DefaultSelector()
        # Guards wake_w: once _close() closed it, its number may be any new descriptor of this
        # process -- another pool's task pipe among them -- so nobody may write to it any more.
        self.wake_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.outcomes = Outcomes(self.lock)
        self.traffic = Traffic(self)
        self.workers = Workers(self)
        self.thread = threading.Thread(target=self._run, name=MANAGER_THREAD, daemon=True)
        try:
            for _ in range(workers):
                self.workers.start()
        except BaseException:
            self.workers.stop(kill=True)
            self._close()
            raise
        register(self)
        self.thread.start()

    # -- the users' calls -------------------------------------------------------------------
    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> TaskFuture[Any]:
        future: TaskFuture[Any] = TaskFuture(self)
        task = Task(future, fn, args, kwargs, timeout)
        future._task = task
        with self.lock:
            if self.broken is not None:
                raise BrokenProcessPool(str(self.broken))
            if interpreter_exiting():
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self.closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.traffic.queue.append(task)  # the hot path: Traffic's queue, appended inline
            self.outcomes.counts["submitted"] += 1
            wake, self.sleeping = self.sleeping, False
        if wake:
            self._wake()
        return future

    def cancel_task(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        with self.lock:
            if task.state == CANCELLED:  # a cancel raced ours: the future says the rest
                return cancel_and_notify(future)
            sent = task.state == SENT
            if not self.traffic.cancel(task):
                return False
            self.outcomes.cancel(task)
            if sent:
                # The manager may sleep counting on this task's result to wake it (see
                # _step): that result will never come, so the next submit() must wake it.
                self.sleeping = True
        return cancel_and_notify(future)

    def task_started(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        worker = task.worker
        return task.state == SENT and worker is not None and worker.claimed() >= task.seq

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[Task] = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                cancelled = self.traffic.cancel_all()
                for task in cancelled:
                    self.outcomes.cancel(task)
        for task in cancelled:
            cancel_and_notify(task.future)
        self._wake()
        if wait and threading.current_thread() is not self.thread:
            while not self.finished.wait(0.1):  # in slices, so Ctrl-C can interrupt the wait
                pass

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.outcomes.counts)
            counts["queued"] = self.traffic.queued()
            counts["running"] = sum(w.claimed() in w.inflight for w in self.workers)
            counts["sent"] = sum(len(w.inflight) for w in self.workers)
            counts["workers"] = len(self.workers)
        try:
            counts["in_section"] = self.semaphore.limit - self.semaphore.value
        except Exception:  # closed after shutdown
            counts["in_section"] = 0
        with self.lock:
            counts["max_in_section"] = self.workers.max_in_section()
        return counts

    def request_stop(self) -> None:
        """The pool object is gone, or the interpreter is exiting: finish the queue, stop."""
        if os.getpid() != self.pid:  # a forked child's copy: the pool is not its to stop
            return
        with self.lock:
            self.closing = True
        self._wake()

    def break_pool(self, broken: BrokenProcessPool) -> None:
        """Fail every queued and sent task; refuse new ones."""
        with self.lock:
            if self.broken is None:
                self.broken = broken
            self.outcomes.fail_all(self.traffic.take_all(), broken)

    # -- the manager thread ------------------------------------------------------------------
    def _wake(self) -> None:
        """Wake the manager thread -- never once it closed the wake-up pipe (see ``_close``)."""
        with self.wake_lock:
            if self.wake_w < 0 or os.getpid() != self.pid:
                return
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self.wake_w, b"\0")

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug of ours must not leave futures pending forever
            logger.exception("procthrottle pool manager failed; failing the pool's tasks")
            broken = BrokenProcessPool(f"the pool's manager thread failed: {exc!r}")
            broken.__cause__ = exc
            with contextlib.suppress(BaseException):
                self.outcomes.deliver()  # results already read are results: deliver them
            self.break_pool(broken)
        finally:
            try:
                self.outcomes.deliver()
            finally:
                self.workers.stop(kill=self.broken is not None)
                self._close()
                self.finished.set()

    def _step(self) -> bool:
        """One turn: plan what to send (locked), pickle and write it (unlocked: submit() and
        cancel() are never held up by pickling or system calls), wait, read, handle."""
        traffic, outcomes = self.traffic, self.outcomes
        with self.lock:
            if self.broken is not None:
                return False
            plan: list[Planned] = []
            traffic.plan(plan)
            retry = traffic.balance(plan)
        traffic.send(plan)
        with self.lock:
            finish = self.closing and traffic.idle()
            timeout: float | None = 0.0
            if not finish and not traffic.can_plan():
                timeout = earliest(retry, traffic.check_timeouts())
                # From here on, submit() wakes us -- unless every worker has plenty queued:
                # then its next result wakes us soon enough, and submit() saves a wake-up.
                self.sleeping = not traffic.result_due()
        for worker in list(self.workers):
            traffic.flush(worker)
        outcomes.deliver()
        if finish:
            return False
        events = self.selector.select(timeout)
        reads: list[tuple[Worker, list[_wire.Frame]]] = []
        exited: list[Worker] = []
        for key, _ in events:
            worker = key.data
            if worker is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            elif key.fd == worker.task_fd:
                traffic.flush(worker)
            elif key.fd == worker.result_fd:
                reads.append((worker, traffic.read(worker)))
            elif not worker.dead:
                exited.append(worker)
        with self.lock:
            self.sleeping = False
            for worker, frames in reads:
                traffic.on_results(worker, frames)
            del reads
            for worker in exited:
                self.workers.on_exit(worker)
        outcomes.deliver()
        return True

    def _close(self) -> None:
        unregister(self)
        with contextlib.suppress(OSError):
            self.selector.close()
        # A late _wake() (shutdown() again, the pool's finalizer) must not write its byte into
        # whatever descriptor reuses the number next -- e.g. another pool's task pipe, where one
        # stray zero byte turns the next frame's length into 0 and the stream is out of step.
        with self.wake_lock:
            for fd in (self.wake_r, self.wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.wake_r = self.wake_w = -1
        if self.owns_semaphore:
            with contextlib.suppress(Exception):
                self.semaphore.close()
