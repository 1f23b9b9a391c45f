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
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio.to_thread

from .._exceptions import WorkerCrashedError
from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_limit
from .._typing import Self
from . import _worker
from ._futures import wait_future

T = TypeVar("T")
#: A task whose worker died before it started is sent again at most this many times.
MAX_ATTEMPTS = 3


class _Task:
    __slots__ = ("attempts", "chunked", "future", "payload", "slot")

    def __init__(self, future: Future[Any], payload: bytes, chunked: bool) -> None:
        self.future, self.payload, self.chunked = future, payload, chunked
        self.slot = -1
        self.attempts = 0


def _positive(name: str, value: object, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, "
                        f"not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


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
        workers = _positive("max_workers", max_workers) or os.cpu_count() or 1
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
        _positive("max_tasks_per_child", max_tasks_per_child)
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
        # no worker waits on the semaphore for a task of ours. Otherwise keep every worker
        # busy with one task queued behind it.
        tight = not self._section and self._sem.limit < workers
        window = self._sem.limit if tight else 2 * workers
        self._started = mp_context.Array("i", window, lock=False)
        self._peak = mp_context.Value("i", 0)
        self._free_slots = list(range(window))[::-1]
        self._initializer, self._initargs = initializer, initargs
        self._max_tasks_per_child = max_tasks_per_child

        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._inflight = 0
        self._generation = 0
        self._dead: dict[int, dict[int, int | None]] = {}  # generation -> pid -> exit code
        self._shutdown = False
        self._idle = threading.Condition(self._lock)
        self._counts = dict.fromkeys(("submitted", "completed", "failed", "crashed", "resent"), 0)
        self._inner = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        state = _worker.WorkerState(self._sem, self._started, self._peak, self._section)
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
        return self._submit(fn, (fn, args, kwargs), chunked=False)

    def _submit(self, fn: Callable[..., Any], call: Any, *, chunked: bool) -> Future[Any]:
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
            self._queue.append(_Task(future, payload, chunked))
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
        chunksize = int(_positive("chunksize", chunksize, optional=False) or 1)
        _positive("buffersize", buffersize)
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)  # noqa: B905 - shortest wins, as in Executor.map
        futures = self._submit_all(fn, calls, chunksize, buffersize)
        results = self._collect(futures, deadline)
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
                return self._submit(fn, (fn, unit, {}), chunked=False)
            return self._submit(fn, (fn, unit), chunked=True)

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
    def _collect(futures: Iterator[Future[Any]], deadline: float | None) -> Iterator[Any]:
        for future in futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = future.result(remaining)
            if isinstance(result, _Chunk):
                yield from result.values
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
                while self._inflight or self._queue:
                    self._idle.wait()
            busy = bool(self._inflight or self._queue)
        if not busy:  # else the last task to finish shuts the executor down
            self._inner.shutdown(wait=wait)
        if wait and self._owns_sem:
            self._sem.close()

    def stats(self) -> dict[str, int]:
        """Counters: submitted, running, queued, completed, failed, crashed, resent,
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
    ) -> AsyncIterator[T]:
        """Results of ``fn(item)`` in input order, with at most ``buffersize`` items pending
        (default: twice the workers). Closing or cancelling it cancels the pending tasks."""
        buffersize = _positive("buffersize", buffersize) or 2 * self._max_workers * chunksize
        calls = ((item,) for item in iterable)
        futures = self._submit_all(fn, calls, int(chunksize), buffersize)
        bar = _progress_bar() if progress else None
        try:
            for future in futures:
                result = await wait_future(future)
                values = result.values if isinstance(result, _Chunk) else [result]
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
        """Send queued tasks to the executor while window slots are free."""
        while True:
            with self._lock:
                if not self._queue or not self._free_slots:
                    return
                task = self._queue.popleft()
                if task.attempts == 0 and not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                task.slot = self._free_slots.pop()
                self._inflight += 1
                inner, generation = self._inner, self._generation
            self._started[task.slot] = 0
            runner = _worker.run_chunk if task.chunked else _worker.run_task
            try:
                inner_future = inner.submit(runner, task.slot, task.payload)
            except (BrokenProcessPool, RuntimeError):
                inner_future = Future()
                inner_future.set_exception(BrokenProcessPool("broken before submit"))
            inner_future.add_done_callback(partial(self._on_done, task, generation))

    def _on_done(self, task: _Task, generation: int, inner: Future[Any]) -> None:
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool):
            self._on_broken(task, generation)
        else:
            with self._lock:
                self._release_slot(task)
                self._counts["completed" if exc is None else "failed"] += 1
            if exc is None:
                result = inner.result()
                task.future.set_result(_Chunk(result) if task.chunked else result)
            else:
                task.future.set_exception(exc)
        self._pump()
        if self._shutdown:
            with self._lock:
                idle = not (self._inflight or self._queue)
            if idle:
                self._inner.shutdown(wait=False)

    def _on_broken(self, task: _Task, generation: int) -> None:
        with self._lock:
            if generation == self._generation:  # the first to hear of it: replace the executor
                self._dead[generation] = self._exit_codes(self._inner)
                old, self._inner = self._inner, self._new_executor()
                self._generation += 1
                threading.Thread(target=old.shutdown, daemon=True).start()
            dead = self._dead[generation]
            pid = self._started[task.slot]
            self._release_slot(task)
            if pid in dead:
                crash: str | None = f"the worker process (pid {pid}) running this task " + \
                    describe_exit(dead[pid])
            elif task.attempts + 1 >= MAX_ATTEMPTS:
                crash = f"worker processes died {MAX_ATTEMPTS} times before this task started"
            else:
                crash = None
                task.attempts += 1
                self._queue.appendleft(task)  # first in line again
                self._counts["resent"] += 1
            if crash is not None:
                self._counts["failed"] += 1
                self._counts["crashed"] += 1
        if crash is not None:
            task.future.set_exception(WorkerCrashedError(crash))

    def _release_slot(self, task: _Task) -> None:
        self._free_slots.append(task.slot)
        self._inflight -= 1
        if not self._inflight and not self._queue:
            self._idle.notify_all()

    @staticmethod
    def _exit_codes(executor: ProcessPoolExecutor) -> dict[int, int | None]:
        """pid -> exit code of the executor's workers that are dead right now."""
        processes = getattr(executor, "_processes", None) or {}
        dead: dict[int, int | None] = {}
        for pid, process in list(processes.items()):
            code = process.exitcode
            if code is not None:
                dead[pid] = code
        return dead


class _Chunk:
    """The results of one chunk, told apart from a task that returns a list."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values


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
