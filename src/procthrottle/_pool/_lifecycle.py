"""The engine's workers' lives: start, exit (crash, timeout, retirement), replacement, a pool
that breaks, shutdown; and the interpreter-exit hook that lets pending tasks finish."""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._exceptions import WorkerCrashedError
from . import _wire, _worker
from ._records import (
    DONE,
    MAX_START_FAILURES,
    NO_MAIN_GUARD,
    PIPE_SIZE,
    QUEUED,
    EngineState,
    Resolution,
    Task,
    Worker,
    describe_exit,
    logger,
    resolve,
)
from ._worker import PEAK, RING, RING_SIZE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the package imports, the pool cannot run
    fcntl = None  # type: ignore[assignment]


class Lifecycle(EngineState):
    def _start_worker(self) -> Worker:
        ctx = self.context
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):  # deeper pipes: fewer wake-ups (Linux)
            with contextlib.suppress(AttributeError, OSError):
                fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        shared = ctx.RawArray("q", RING + RING_SIZE)
        lock = ctx.Lock()
        close_fds: list[int] = []
        if ctx.get_start_method() == "fork":  # the child must not keep other workers' pipes
            close_fds = [self.wake_r, self.wake_w, task_w.fileno(), result_r.fileno()]
            for other in self.workers:
                close_fds += [other.task_fd, other.result_fd]
        boot = _worker.WorkerBoot(
            close_fds=close_fds,
            initargs=self.initargs,
            initializer=self.initializer,
            lock=lock,
            max_tasks=self.max_tasks,
            rate=self.rate,
            results=result_w,
            section_mode=self.section_mode,
            semaphore=self.semaphore,
            shared=shared,
            tasks=task_r,
        )
        process = ctx.Process(target=_worker.main, args=(boot,), name="procthrottle-worker")
        try:
            process.start()
        finally:
            task_r.close()
            result_w.close()
        os.set_blocking(task_w.fileno(), False)
        os.set_blocking(result_r.fileno(), False)
        worker = Worker(process, task_w, result_r, shared, lock)
        self.workers.append(worker)
        self.selector.register(worker.result_fd, selectors.EVENT_READ, worker)
        self.selector.register(process.sentinel, selectors.EVENT_READ, worker)
        self.counts["workers_started"] += 1
        return worker

    def _on_exit(self, worker: Worker, resolutions: list[Resolution]) -> None:
        """A worker exited: finish what it sent, fail what it was running, requeue the rest."""
        if worker.result_fd >= 0:  # what it wrote before it died is still in the pipe
            self._handle(worker, worker.reader.drain(), resolutions)
        worker.process.join(1.0)
        code = worker.process.exitcode
        worker.dead = True
        self._forget(worker)
        claimed = worker.claimed()
        lost: list[Task] = []
        requeue: list[Task] = []
        for seq, task in worker.inflight.items():
            (lost if seq <= claimed else requeue).append(task)
        worker.inflight.clear()
        for task in lost:
            task.state = DONE
            task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
            if task.seq == worker.timed_out:
                exc: BaseException = TimeoutError(
                    f"the task ran longer than its timeout of {task.timeout:g} s; its worker "
                    f"process (pid {worker.pid}) was killed and replaced"
                )
                self.counts["timed_out"] += 1
            else:
                exc = WorkerCrashedError(
                    f"the worker process (pid {worker.pid}) running this task {describe_exit(code)}"
                )
                self.counts["crashed"] += 1
            self.counts["failed"] += 1
            resolutions.append((task.future, False, exc))
        for task in requeue:
            task.state, task.worker = QUEUED, None
        self.queue.extendleft(reversed(requeue))
        self.counts["requeued"] += len(requeue)
        if not worker.ready:
            self._on_start_failure(worker, code)
            return
        if lost and not worker.timed_out:
            logger.warning(
                "procthrottle: worker process %d %s while running a task",
                worker.pid,
                describe_exit(code),
            )
        elif code != 0 and not worker.timed_out:
            logger.warning("procthrottle: worker process %d %s", worker.pid, describe_exit(code))
        if not self.closing or self.queue or any(w.inflight for w in self.workers):
            new = self._start_worker()
            log = logger.debug if code == 0 and not lost else logger.info
            log("procthrottle: started worker process %d to replace %d", new.pid, worker.pid)

    def _on_start_failure(self, worker: Worker, code: int | None) -> None:
        if worker.init_error is not None:
            cause = _wire.decode_error(worker.init_error)
            broken = BrokenProcessPool(
                f"A process in the pool failed to start: its initializer raised "
                f"{type(cause).__name__}: {cause}. The pool is broken."
            )
            broken.__cause__ = cause
        elif code == _worker.EXIT_NO_MAIN_GUARD:
            broken = BrokenProcessPool(NO_MAIN_GUARD)
        else:
            self.start_failures += 1
            # Per worker slot on average: a few workers killed while starting (the OOM killer)
            # is no reason to give up; every start failing, over and over, is.
            if self.start_failures < MAX_START_FAILURES * self.size:
                logger.warning(
                    "procthrottle: worker process %d %s before it was ready; starting another",
                    worker.pid,
                    describe_exit(code),
                )
                self._start_worker()
                return
            broken = BrokenProcessPool(
                f"worker processes died {self.start_failures} times in a row before they were "
                f"ready (the last one, pid {worker.pid}, {describe_exit(code)})"
            )
        if self.broken is None:
            logger.error("procthrottle: %s", broken)
        self._break(broken)

    def _break(self, broken: BrokenProcessPool) -> None:
        """Fail every queued and sent task; refuse new ones."""
        failed: list[Resolution] = []
        with self.lock:
            if self.broken is None:
                self.broken = broken
            tasks = [t for t in self.queue if t.state == QUEUED]
            self.queue.clear()
            for worker in self.workers:
                tasks += worker.inflight.values()
                worker.inflight.clear()
            for task in tasks:
                task.state = DONE
                task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                error = BrokenProcessPool(str(broken))
                error.__cause__ = broken.__cause__
                failed.append((task.future, False, error))
            self.counts["failed"] += len(failed)
        resolve(failed, self)

    def _forget(self, worker: Worker) -> None:
        for fd in (worker.result_fd, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                if fd >= 0:
                    self.selector.unregister(fd)
        if worker.writing:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(worker.task_fd)
            worker.writing = False
        worker.out.clear()
        worker.out_bytes = 0
        worker.task_conn.close()
        worker.result_conn.close()
        worker.task_fd = worker.result_fd = -1  # their numbers are free for new descriptors
        if worker in self.workers:
            self.workers.remove(worker)
            self.peak = max(self.peak, int(worker.shared[PEAK]))  # what it saw outlives it

    def _stop_workers(self, kill: bool) -> None:
        """Send every worker a stop frame and close its task pipe, then reap them.

        The stop frame, not the pipe's EOF, is what ends an idle worker: another process may
        hold the pipe's write end too (a sibling pool's fork, a child forked meanwhile), and
        then the EOF never comes."""
        stop = _wire.task_header(_wire.STOP, 0)
        with self.lock:
            workers = list(self.workers)
            for worker in workers:
                if not kill and not worker.out and worker.task_fd >= 0:
                    with contextlib.suppress(OSError):  # full (not idle) or gone: EOF, kill
                        os.write(worker.task_fd, stop)
                worker.dead = True
                self._forget(worker)
        if kill:
            for worker in workers:
                worker.process.kill()
        deadline = time.monotonic() + 5.0  # for all of them together, not 5 s each
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.exitcode is None:  # pragma: no cover - stuck in an initializer
                worker.process.kill()
                worker.process.join(5.0)

    def _close(self) -> None:
        _live.discard(self)
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


# -- interpreter exit: pending tasks still run, as ProcessPoolExecutor promises -------------------
_live: weakref.WeakSet[EngineState] = weakref.WeakSet()
_exiting = False


def interpreter_exiting() -> bool:
    return _exiting


def register(engine: EngineState) -> None:
    _live.add(engine)


def _python_exit() -> None:
    global _exiting
    _exiting = True
    engines = [engine for engine in _live if engine.pid == os.getpid()]  # not a fork's copy
    for engine in engines:
        engine.request_stop()
    for engine in engines:
        engine.thread.join()


_register: Any = getattr(threading, "_register_atexit", None)
if _register is not None:  # pragma: no branch
    _register(_python_exit)
