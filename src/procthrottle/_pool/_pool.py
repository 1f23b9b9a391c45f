"""``ThrottledProcessPool``: a process pool that bounds critical sections and survives crashes."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import connection
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio.to_thread

from .._exceptions import WorkerCrashedError
from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_limit, check_positive
from .._typing import Self
from . import _worker
from ._futures import wait_future

T = TypeVar("T")
#: A task whose worker died before it started is sent again at most this many times.
MAX_ATTEMPTS = 3
#: Batches of short tasks aim at this much work per call to the executor...
BATCH_SECONDS = 0.005
#: ...and hold at most this many tasks.
MAX_BATCH = 64


class _Task:
    __slots__ = ("attempts", "future", "payload")

    def __init__(self, future: Future[Any], payload: bytes) -> None:
        self.future, self.payload = future, payload
        self.attempts = 0


class _Batch:
    """Tasks sent to one worker in one call, sharing one window slot."""

    __slots__ = ("generation", "slot", "tasks")

    def __init__(self, tasks: list[_Task], slot: int, generation: int) -> None:
        self.tasks, self.slot, self.generation = tasks, slot, generation


def _optional_positive(name: str, value: object) -> int | None:
    return None if value is None else check_positive(name, value)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "died of an unknown cause"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} (os._exit or a fatal error)"


class ThrottledProcessPool(Executor):
    """A ``ProcessPoolExecutor`` that lets at most ``limit`` tasks into their critical part.

    * ``throttle="task"``: at most ``limit`` tasks run at once. The pool sends workers only as
      many tasks as may run, so queued tasks never park a worker on the semaphore.
    * ``throttle="section"``: tasks run on all ``max_workers`` processes; at most ``limit`` of
      them are inside :func:`procthrottle.critical_section` at once.
    * ``semaphore=`` shares one limit between pools and programs (a named semaphore: the host).
    * A worker that dies mid-task (SIGKILL, ``os._exit``, segfault) fails that task with
      :class:`WorkerCrashedError`; the pool replaces its broken executor and sends the other
      tasks again (at-least-once for tasks that were running on other workers at that moment).
      The dead worker's permit comes back through the crash-safe semaphore.
    * Task arguments are pickled in ``submit``: an unpicklable task fails its own future only.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        limit: int = 1,
        *,
        semaphore: ProcessSemaphore | None = None,
        throttle: Literal["task", "section"] = "task",
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        workers = _optional_positive("max_workers", max_workers) or os.cpu_count() or 1
        limit = check_limit(limit)
        if semaphore is not None:
            if not isinstance(semaphore, ProcessSemaphore):
                raise TypeError(
                    f"semaphore must be a ProcessSemaphore, not {type(semaphore).__name__}"
                )
            if limit not in (1, semaphore.limit):
                raise ValueError(
                    f"limit={limit} contradicts semaphore.limit={semaphore.limit}; pass one"
                )
        if throttle not in ("task", "section"):
            raise ValueError(f"throttle must be 'task' or 'section', got {throttle!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable or None")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        _optional_positive("max_tasks_per_child", max_tasks_per_child)
        if max_tasks_per_child is not None and sys.version_info < (3, 11):
            raise NotImplementedError("max_tasks_per_child needs Python 3.11 or newer")

        self._sem = semaphore if semaphore is not None else ProcessSemaphore(limit)
        self._owns_sem = semaphore is None
        self._section = throttle == "section"
        self._max_workers = workers
        if mp_context is None:
            mp_context = multiprocessing.get_context(
                "spawn" if max_tasks_per_child else None
            )
        self._ctx = mp_context
        # In task mode with fewer permits than workers, only `limit` tasks are in flight, so
        # no worker waits on the semaphore for a task of ours. Otherwise a deep window keeps
        # the executor's own pipeline full (its workers never wait for our dispatch).
        tight = not self._section and self._sem.limit < workers
        window = self._sem.limit if tight else max(64, 4 * workers)
        self._started = mp_context.Array("i", window, lock=False)  # slot -> pid running it
        self._progress = mp_context.Array("i", window, lock=False)  # slot -> task index
        self._peak = mp_context.Value("i", 0)
        self._free_slots = list(range(window))[::-1]
        self._initializer, self._initargs = initializer, initargs
        self._max_tasks_per_child = max_tasks_per_child

        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._inflight = 0
        self._generation = 0
        self._task_seconds: float | None = None  # running average, for batch sizes
        self._dead: dict[int, dict[int, int | None]] = {}  # generation -> pid -> exit code
        self._shutdown = self._joining = False
        self._idle = threading.Condition(self._lock)
        self._counts = dict.fromkeys(
            ("submitted", "completed", "failed", "crashed", "resent", "batches"), 0
        )
        self._inner = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        state = _worker.WorkerState(
            self._sem, self._started, self._progress, self._peak, self._section
        )
        extra = {}
        if self._max_tasks_per_child is not None:
            extra["max_tasks_per_child"] = self._max_tasks_per_child
        return ProcessPoolExecutor(
            self._max_workers,
            mp_context=self._ctx,
            initializer=_worker.initialize,
            initargs=(state, self._initializer, self._initargs),
            **extra,
        )

    # -- Executor API ------------------------------------------------------------------------
    @property
    def semaphore(self) -> ProcessSemaphore:
        """The semaphore that bounds the tasks (or sections)."""
        return self._sem

    @property
    def limit(self) -> int:
        return self._sem.limit

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; the future fails on its own if it can't be sent."""
        return self._submit(fn, (fn, args, kwargs))

    def _submit(self, fn: Callable[..., Any], call: Any) -> Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[Any] = Future()
        try:
            payload = pickle.dumps(call, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            future.set_exception(
                TypeError(
                    f"cannot send {getattr(fn, '__qualname__', fn)!r} to a worker process: it "
                    f"or one of its arguments cannot be pickled ({type(exc).__name__}: {exc}). "
                    "Use module-level functions and picklable arguments."
                )
            )
            with self._lock:
                self._counts["submitted"] += 1
                self._counts["failed"] += 1
            return future
        with self._lock:
            self._queue.append(_Task(future, payload))
            self._counts["submitted"] += 1
        self._pump()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like ``Executor.map``; with ``buffersize`` lazy, holding at most that many pending
        items (chunks count ``chunksize`` items), so infinite iterators work."""
        chunksize = check_positive("chunksize", chunksize)
        _optional_positive("buffersize", buffersize)
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)  # noqa: B905 - shortest wins, as in Executor.map
        futures = self._submit_all(fn, calls, chunksize, buffersize)
        results = self._collect(futures, deadline, chunksize > 1)
        return _with_progress(results) if progress else results

    def _submit_all(
        self,
        fn: Callable[..., Any],
        calls: Iterator[tuple[Any, ...]],
        chunksize: int,
        buffersize: int | None,
    ) -> Generator[Future[Any], None, None]:
        """Submit now (all, or the first ``buffersize`` items); yield futures in input order,
        submitting one more unit as each is taken."""
        if chunksize == 1:
            units: Iterator[Any] = calls
        else:
            units = iter(lambda: list(itertools.islice(calls, chunksize)), [])
        ahead = None if buffersize is None else max(1, buffersize // chunksize)

        def submit(unit: Any) -> Future[Any]:
            if chunksize == 1:
                return self._submit(fn, (fn, unit, {}))
            return self._submit(fn, (_worker.call_chunk, (fn, unit), {}))

        first = units if ahead is None else itertools.islice(units, ahead)
        pending: deque[Future[Any]] = deque(submit(unit) for unit in first)

        def futures() -> Generator[Future[Any], None, None]:
            try:
                while pending:
                    yield pending.popleft()
                    if ahead is not None:
                        for unit in itertools.islice(units, 1):
                            pending.append(submit(unit))
            finally:
                for future in pending:
                    future.cancel()

        return futures()

    @staticmethod
    def _collect(
        futures: Iterator[Future[Any]], deadline: float | None, chunked: bool
    ) -> Iterator[Any]:
        for future in futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = future.result(remaining)
            if chunked:
                yield from result
            else:
                yield result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; optionally cancel queued ones and wait for the rest."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
            if wait:
                self._joining = True  # we shut the executor down ourselves, and wait for it
                while self._inflight or self._queue:
                    self._idle.wait()
            busy = bool(self._inflight or self._queue)
        if not busy:  # else the last task to finish shuts the executor down
            self._inner.shutdown(wait=wait)
        if wait and self._owns_sem:
            self._sem.close()

    def stats(self) -> dict[str, int]:
        """Counters: submitted, running (sent to workers, not done), queued, completed, failed,
        crashed, resent, batches (calls to the executor: short tasks travel together),
        in_section (permits held now) and max_in_section (the peak seen by workers)."""
        with self._lock:
            counts = dict(self._counts)
            counts["running"] = self._inflight
            counts["queued"] = len(self._queue)
        try:
            counts["in_section"] = self._sem.limit - self._sem.value
        except Exception:  # closed after shutdown
            counts["in_section"] = 0
        counts["max_in_section"] = self._peak.value
        return counts

    # -- async API ------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await`` the task's result; cancelling cancels the task if it has not started."""
        return await wait_future(self.submit(fn, *args, **kwargs))

    async def amap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> AsyncGenerator[T, None]:
        """Results of ``fn(item)`` in input order, with at most ``buffersize`` items pending
        (default: twice the workers). Closing or cancelling it cancels the pending tasks."""
        buffersize = (
            _optional_positive("buffersize", buffersize) or 2 * self._max_workers * chunksize
        )
        calls = ((item,) for item in iterable)
        futures = self._submit_all(fn, calls, int(chunksize), buffersize)
        bar = _progress_bar() if progress else None
        try:
            for future in futures:
                result = await wait_future(future)
                values = result if chunksize > 1 else [result]
                for value in values:
                    if bar is not None:
                        bar.update(1)
                    yield value
        finally:
            futures.close()  # cancels what is still pending
            if bar is not None:
                bar.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.shutdown)

    # -- dispatch and crash recovery ---------------------------------------------------------
    def _pump(self) -> None:
        """Send queued tasks to the executor, in batches, while window slots are free."""
        while True:
            with self._lock:
                if not self._queue or not self._free_slots:
                    return
                tasks = self._take(self._batch_size())
                if not tasks:
                    continue
                batch = _Batch(tasks, self._free_slots.pop(), self._generation)
                self._inflight += len(tasks)
                self._counts["batches"] += 1
                inner = self._inner
            self._started[batch.slot] = 0
            payloads = [task.payload for task in tasks]
            try:
                inner_future = inner.submit(_worker.run_batch, batch.slot, payloads)
            except (BrokenProcessPool, RuntimeError):
                inner_future = Future()
                inner_future.set_exception(BrokenProcessPool("broken before submit"))
            inner_future.add_done_callback(partial(self._on_done, batch))

    def _take(self, count: int) -> list[_Task]:
        """Up to ``count`` queued tasks that were not cancelled (caller holds the lock)."""
        tasks: list[_Task] = []
        while self._queue and len(tasks) < count:
            task = self._queue.popleft()
            if task.attempts or task.future.set_running_or_notify_cancel():
                tasks.append(task)
        return tasks

    def _batch_size(self) -> int:
        """Tasks per call: one until tasks prove short, then enough for ~5 ms of work, but
        never so many that some workers would wait while one works through a long batch."""
        if self._task_seconds is None:
            return 1
        wanted = int(BATCH_SECONDS / max(self._task_seconds, 1e-6))
        fair = -(-len(self._queue) // (2 * self._max_workers))  # ceil
        return max(1, min(wanted, fair, MAX_BATCH))

    def _on_done(self, batch: _Batch, inner: Future[Any]) -> None:
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool):
            self._on_broken(batch)
        else:
            outcomes: list[tuple[bool, Any]]
            if exc is None:
                outcomes, seconds = _worker.load_outcomes(inner.result())
            else:  # pragma: no cover - run_batch catches everything; be safe anyway
                outcomes, seconds = [(False, exc)] * len(batch.tasks), None
            with self._lock:
                self._release_slot(batch)
                failed = sum(not ok for ok, _ in outcomes)
                self._counts["failed"] += failed
                self._counts["completed"] += len(outcomes) - failed
                if seconds is not None:
                    per_task = seconds / len(outcomes)
                    old = self._task_seconds
                    self._task_seconds = per_task if old is None else 0.8 * old + 0.2 * per_task
            for task, (ok, value) in zip(batch.tasks, outcomes, strict=True):
                if ok:
                    task.future.set_result(value)
                else:
                    task.future.set_exception(value)
        self._pump()
        if self._shutdown and not self._joining:  # shutdown(wait=False) left this to us
            with self._lock:
                idle = not (self._inflight or self._queue)
            if idle:
                self._inner.shutdown(wait=False)

    def _on_broken(self, batch: _Batch) -> None:
        crashed: list[tuple[_Task, str]] = []
        with self._lock:
            if batch.generation == self._generation:  # the first to hear: replace the executor
                self._dead[batch.generation] = self._exit_codes(self._inner)
                old, self._inner = self._inner, self._new_executor()
                self._generation += 1
                threading.Thread(target=old.shutdown, daemon=True).start()
            dead = self._dead[batch.generation]
            pid, running = self._started[batch.slot], self._progress[batch.slot]
            self._release_slot(batch)
            resend = []
            for index, task in enumerate(batch.tasks):
                if pid in dead and index == running:
                    exit_ = describe_exit(dead[pid])
                    why = f"the worker process (pid {pid}) running this task {exit_}"
                    crashed.append((task, why))
                elif task.attempts + 1 >= MAX_ATTEMPTS:
                    why = f"worker processes died {MAX_ATTEMPTS} times before this task ran"
                    crashed.append((task, why))
                else:  # not started, or its result died with the executor: run it again
                    task.attempts += 1
                    resend.append(task)
            self._queue.extendleft(reversed(resend))  # first in line again, in order
            self._counts["resent"] += len(resend)
            self._counts["failed"] += len(crashed)
            self._counts["crashed"] += len(crashed)
        for task, why in crashed:
            task.future.set_exception(WorkerCrashedError(why))

    def _release_slot(self, batch: _Batch) -> None:
        self._free_slots.append(batch.slot)
        self._inflight -= len(batch.tasks)
        if not self._inflight and not self._queue:
            self._idle.notify_all()

    @staticmethod
    def _exit_codes(executor: ProcessPoolExecutor) -> dict[int, int | None]:
        """pid -> exit code of the executor's workers that are dead right now.

        A worker's sentinel becomes ready as it exits, a moment before the kernel can report
        its exit status, so reap the dead ones with a short join rather than a bare poll.
        """
        processes = dict(getattr(executor, "_processes", None) or {})
        by_sentinel = {p.sentinel: (pid, p) for pid, p in processes.items()}
        dead: dict[int, int | None] = {}
        for sentinel in connection.wait(list(by_sentinel), timeout=0):
            pid, process = by_sentinel[sentinel]
            process.join(1.0)
            dead[pid] = process.exitcode
        return dead


def _progress_bar() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        raise ImportError(
            "progress=True needs tqdm: pip install 'procthrottle[progress]'"
        ) from None
    return tqdm(unit="task")


def _with_progress(results: Iterator[T]) -> Iterator[T]:
    bar = _progress_bar()
    try:
        for result in results:
            bar.update(1)
            yield result
    finally:
        bar.close()
