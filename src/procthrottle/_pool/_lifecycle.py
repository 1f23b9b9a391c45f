"""The pool's workers' lives: start, exit (crash, timeout, retirement), replacement, stop;
and the interpreter-exit hook that lets pending tasks finish."""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from .._exceptions import WorkerCrashedError
from . import _wire, _worker
from ._records import (
    MAX_START_FAILURES,
    NO_MAIN_GUARD,
    PIPE_SIZE,
    Worker,
    describe_exit,
    logger,
)
from ._worker import PEAK, RING, RING_SIZE

if TYPE_CHECKING:
    from ._engine import Engine

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the package imports, the pool cannot run
    fcntl = None  # type: ignore[assignment]


class Workers:
    """The pool's worker processes: the one owner of the set, each worker's start, its exit and
    its replacement, and stopping them all. Iterating gives the live workers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.live: list[Worker] = []
        self.peak = 0  # the most holders seen by workers that left (the others: their PEAK)
        self.start_failures = 0

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.live)

    def __len__(self) -> int:
        return len(self.live)

    def __getitem__(self, index: int) -> Worker:
        return self.live[index]

    def processes(self) -> list[Any]:
        """The live workers' ``multiprocessing`` process objects."""
        return [worker.process for worker in self.live]

    def max_in_section(self) -> int:
        return max([self.peak, *(int(w.shared[PEAK]) for w in self.live)])

    def start(self) -> Worker:
        engine = self.engine
        ctx = engine.context
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):  # deeper pipes: fewer wake-ups (Linux)
            with contextlib.suppress(AttributeError, OSError):
                fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        shared = ctx.RawArray("q", RING + RING_SIZE)
        lock = ctx.Lock()
        close_fds: list[int] = []
        if ctx.get_start_method() == "fork":  # the child must not keep other workers' pipes
            close_fds = [engine.wake_r, engine.wake_w, task_w.fileno(), result_r.fileno()]
            for other in self.live:
                close_fds += [other.task_fd, other.result_fd]
        boot = _worker.WorkerBoot(
            close_fds=close_fds,
            initargs=engine.initargs,
            initializer=engine.initializer,
            lock=lock,
            max_tasks=engine.max_tasks,
            rate=engine.rate,
            results=result_w,
            section_mode=engine.section_mode,
            semaphore=engine.semaphore,
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
        self.live.append(worker)
        engine.selector.register(worker.result_fd, selectors.EVENT_READ, worker)
        engine.selector.register(process.sentinel, selectors.EVENT_READ, worker)
        engine.outcomes.count("workers_started")
        return worker

    def started(self, worker: Worker) -> None:
        """``worker`` said it is ready (its initializer ran)."""
        worker.ready = True
        self.start_failures = 0

    def on_exit(self, worker: Worker) -> None:
        """A worker exited (caller holds the lock): finish what it sent, fail what it was
        running, requeue the rest, and replace it."""
        engine = self.engine
        if worker.result_fd >= 0:  # what it wrote before it died is still in the pipe
            engine.traffic.on_results(worker, worker.reader.drain())
        worker.process.join(1.0)
        code = worker.process.exitcode
        worker.dead = True
        self.forget(worker)
        lost = engine.traffic.reclaim(worker)
        for task in lost:
            if task.seq == worker.timed_out:
                exc: BaseException = TimeoutError(
                    f"the task ran longer than its timeout of {task.timeout:g} s; its worker "
                    f"process (pid {worker.pid}) was killed and replaced"
                )
                engine.outcomes.fail(task, exc, "timed_out")
            else:
                exc = WorkerCrashedError(
                    f"the worker process (pid {worker.pid}) running this task {describe_exit(code)}"
                )
                engine.outcomes.fail(task, exc, "crashed")
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
        if not engine.closing or not engine.traffic.idle():
            new = self.start()
            log = logger.debug if code == 0 and not lost else logger.info
            log("procthrottle: started worker process %d to replace %d", new.pid, worker.pid)

    def _on_start_failure(self, worker: Worker, code: int | None) -> None:
        if worker.init_error is not None:
            cause = _wire.decode_error(worker.init_error)
            if worker.init_kind == _wire.OPEN_FAILED:
                why = (
                    "it could not open the pool's semaphore or rate limiter (unlinked or "
                    "removed from the host?):"
                )
            else:
                why = "its initializer raised"
            broken = BrokenProcessPool(
                f"A process in the pool failed to start: {why} "
                f"{type(cause).__name__}: {cause}. The pool is broken."
            )
            broken.__cause__ = cause
        elif code == _worker.EXIT_NO_MAIN_GUARD:
            broken = BrokenProcessPool(NO_MAIN_GUARD)
        else:
            self.start_failures += 1
            # Per worker slot on average: a few workers killed while starting (the OOM killer)
            # is no reason to give up; every start failing, over and over, is.
            if self.start_failures < MAX_START_FAILURES * self.engine.size:
                logger.warning(
                    "procthrottle: worker process %d %s before it was ready; starting another",
                    worker.pid,
                    describe_exit(code),
                )
                self.start()
                return
            broken = BrokenProcessPool(
                f"worker processes died {self.start_failures} times in a row before they were "
                f"ready (the last one, pid {worker.pid}, {describe_exit(code)})"
            )
        if self.engine.broken is None:
            logger.error("procthrottle: %s", broken)
        self.engine.break_pool(broken)

    def forget(self, worker: Worker) -> None:
        selector = self.engine.selector
        for fd in (worker.result_fd, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                if fd >= 0:
                    selector.unregister(fd)
        with contextlib.suppress(KeyError, ValueError, OSError):
            worker.outbox.watch(selector, worker, False)
        worker.outbox.clear()
        worker.task_conn.close()
        worker.result_conn.close()
        worker.task_fd = worker.result_fd = -1  # their numbers are free for new descriptors
        if worker in self.live:
            self.live.remove(worker)
            self.peak = max(self.peak, int(worker.shared[PEAK]))  # what it saw outlives it

    def stop(self, kill: bool) -> None:
        """Send every worker a stop frame and close its task pipe, then reap them.

        The stop frame, not the pipe's EOF, is what ends an idle worker: another process may
        hold the pipe's write end too (a sibling pool's fork, a child forked meanwhile), and
        then the EOF never comes."""
        stop = _wire.task_header(_wire.STOP, 0)
        with self.engine.lock:
            workers = list(self.live)
            for worker in workers:
                if not kill and not worker.outbox and worker.task_fd >= 0:
                    with contextlib.suppress(OSError):  # full (not idle) or gone: EOF, kill
                        os.write(worker.task_fd, stop)
                worker.dead = True
                self.forget(worker)
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


# -- interpreter exit: pending tasks still run, as ProcessPoolExecutor promises -------------------
_live: weakref.WeakSet[Engine] = weakref.WeakSet()
_exiting = False


def interpreter_exiting() -> bool:
    return _exiting


def register(engine: Engine) -> None:
    _live.add(engine)


def unregister(engine: Engine) -> None:
    _live.discard(engine)


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
