"""The parent side of ThrottledProcessPool: worker processes, dispatch, results and crashes.

One manager thread per pool waits (``selectors``) on every worker's result pipe, every worker's
process sentinel and a wake-up pipe, writes queued tasks to the workers' task pipes without
ever blocking, and resolves futures. See docs/design.md, "Process pools".
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._kernel._semaphore import ProcessSemaphore
from . import _wire
from ._futures import MANAGER_THREAD, TaskFuture, cancel_and_notify
from ._lifecycle import Lifecycle, interpreter_exiting, register
from ._records import (
    CANCELLED,
    QUEUED,
    SENT,
    Planned,
    Resolution,
    Task,
    Worker,
    earliest,
    logger,
    resolve,
)
from ._traffic import Traffic
from ._worker import PEAK


class Engine(Traffic, Lifecycle):
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
        self.peak = 0  # the most holders seen by workers that left (the others: their PEAK)
        self.lock = threading.RLock()
        self.queue: deque[Task] = deque()
        self.workers: list[Worker] = []
        self.counts = dict.fromkeys(
            (
                "submitted",
                "completed",
                "failed",
                "cancelled",
                "crashed",
                "timed_out",
                "requeued",
                "workers_started",
            ),
            0,
        )
        self.average: float | None = None  # seconds per task, running average
        self.payload_size = 0  # bytes per pickled task, running average
        self.closing = False  # no new tasks: finish the queue, then stop
        self.broken: BrokenProcessPool | None = None
        self.start_failures = 0
        self.sleeping = False
        self.finished = threading.Event()
        self.selector = selectors.DefaultSelector()
        # Guards wake_w: once _close() closed it, its number may be any new descriptor of this
        # process -- another pool's task pipe among them -- so nobody may write to it any more.
        self.wake_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._run, name=MANAGER_THREAD, daemon=True)
        try:
            for _ in range(workers):
                self._start_worker()
        except BaseException:
            self._stop_workers(kill=True)
            self._close()
            raise
        register(self)
        self.thread.start()

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
            self.queue.append(task)
            self.counts["submitted"] += 1
            wake, self.sleeping = self.sleeping, False
        if wake:
            self._wake()
        return future

    def cancel_task(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        with self.lock:
            if task.state == QUEUED:
                ok = True
            elif task.state == SENT and task.worker is not None:
                ok = bool(self._revoke(task.worker, [task]))
                # The manager may sleep counting on this task's result to wake it (see
                # _step): that result will never come, so the next submit() must wake it.
                self.sleeping = self.sleeping or ok
            else:
                return task.state == CANCELLED and cancel_and_notify(future)
            if ok:
                task.state = CANCELLED
                task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                self.counts["cancelled"] += 1
        return ok and cancel_and_notify(future)

    def task_started(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        worker = task.worker
        return task.state == SENT and worker is not None and worker.claimed() >= task.seq

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[Task] = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                while self.queue:
                    task = self.queue.popleft()
                    if task.state == QUEUED:
                        cancelled.append(task)
                for worker in self.workers:
                    cancelled.extend(self._revoke(worker, list(worker.inflight.values())))
                for task in cancelled:
                    task.state = CANCELLED
                    task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                self.counts["cancelled"] += len(cancelled)
        for task in cancelled:
            cancel_and_notify(task.future)
        self._wake()
        if wait and threading.current_thread() is not self.thread:
            while not self.finished.wait(0.1):  # in slices, so Ctrl-C can interrupt the wait
                pass

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.counts)
            counts["queued"] = sum(task.state == QUEUED for task in self.queue)
            counts["running"] = sum(w.claimed() in w.inflight for w in self.workers)
            counts["sent"] = sum(len(w.inflight) for w in self.workers)
            counts["workers"] = len(self.workers)
        try:
            counts["in_section"] = self.semaphore.limit - self.semaphore.value
        except Exception:  # closed after shutdown
            counts["in_section"] = 0
        with self.lock:
            counts["max_in_section"] = max(
                [self.peak, *(int(w.shared[PEAK]) for w in self.workers)]
            )
        return counts

    def request_stop(self) -> None:
        """The pool object is gone, or the interpreter is exiting: finish the queue, stop."""
        if os.getpid() != self.pid:  # a forked child's copy: the pool is not its to stop
            return
        with self.lock:
            self.closing = True
        self._wake()

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
            self._break(broken)
        finally:
            self._stop_workers(kill=self.broken is not None)
            self._close()
            self.finished.set()

    def _step(self) -> bool:
        """One turn: plan what to send (locked), pickle and write it (unlocked: submit() and
        cancel() are never held up by pickling or system calls), wait, read, handle."""
        resolutions: list[Resolution] = []
        with self.lock:
            if self.broken is not None:
                return False
            plan: list[Planned] = []
            self._plan(plan)
            retry = self._balance(plan)
        self._send(plan, resolutions)
        with self.lock:
            finish = self.closing and not self.queue and not any(w.inflight for w in self.workers)
            timeout: float | None = 0.0
            if not finish and not self._can_plan():
                timeout = earliest(retry, self._check_timeouts())
                # From here on, submit() wakes us -- unless every worker has plenty queued:
                # then its next result wakes us soon enough, and submit() saves a wake-up.
                depth = self._depth()
                self.sleeping = any(
                    len(w.inflight) * 2 < depth for w in self.workers if w.ready and not w.dead
                ) or not any(w.ready for w in self.workers)
        for worker in list(self.workers):
            self._flush(worker)
        resolve(resolutions, self)
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
                self._flush(worker)
            elif key.fd == worker.result_fd:
                reads.append((worker, self._read(worker)))
            elif not worker.dead:
                exited.append(worker)
        with self.lock:
            self.sleeping = False
            for worker, frames in reads:
                self._handle(worker, frames, resolutions)
            for worker in exited:
                self._on_exit(worker, resolutions)
        resolve(resolutions, self)
        return True
