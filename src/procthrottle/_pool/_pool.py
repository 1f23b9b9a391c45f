"""``ThrottledProcessPool``: a process pool that bounds critical sections and survives crashes."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import multiprocessing.process
import os
import sys
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

import anyio.to_thread

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_limit, check_positive
from .._rate._gates import sync_rate_limiter
from .._typing import Self, TypeVarTuple, Unpack
from . import _worker
from ._engine import Engine
from ._futures import wait_future
from ._map import Pending, collect
from ._progress import Progress, open_bar, total_of, with_progress

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


def _optional_positive(name: str, value: object) -> int | None:
    return None if value is None else check_positive(name, value)


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return None if math.isinf(value) else float(value)


def _default_context(max_tasks_per_child: int | None) -> Any:
    """As ``ProcessPoolExecutor``: the platform default, "spawn" with ``max_tasks_per_child``.
    From Python 3.12, where forking a process that runs threads is deprecated, "forkserver"
    replaces "fork" (the pool's manager thread starts the replacement workers)."""
    if max_tasks_per_child:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context()
    if sys.version_info >= (3, 12) and context.get_start_method() == "fork":
        return multiprocessing.get_context("forkserver")
    return context


class ThrottledProcessPool(Executor):
    """A process pool that lets at most ``limit`` tasks (or task sections) run at once.

    The pool owns its worker processes, each with its own pipes, so it always knows which task
    each worker holds:

    * A worker killed mid-task (SIGKILL, ``os._exit``, segfault) fails only that task's future,
      with `WorkerCrashedError`; every other task runs exactly once; the worker is replaced and
      its permit comes back through the crash-safe semaphore.
    * A future is RUNNING only once its task started on a worker, so ``cancel()`` and
      ``shutdown(cancel_futures=True)`` work for every task that has not started.
    * Short tasks travel to workers many at a time and results come back one by one as each
      task ends; an idle worker takes over tasks queued behind a long one.

    Args:
        max_workers: Number of worker processes (default: the number of CPUs). In task mode
            the pool starts at most ``limit`` of them, since no more could run at once.
        limit: How many tasks (task mode) or critical sections (section mode) may run at once.
        semaphore: A crash-safe `ProcessSemaphore` to share one limit between pools and
            programs (a named one: across the host). Leave ``limit`` at 1 or equal to its limit.
        throttle: ``"task"``: at most ``limit`` tasks run at once. ``"section"``: tasks run
            freely on ``max_workers`` processes, and at most ``limit`` of them are inside
            `critical_section()` at once.
        mp_context: A ``multiprocessing`` context to start workers from (default: the
            platform's default, but ``"forkserver"`` for ``"fork"`` from Python 3.12;
            ``"spawn"`` when ``max_tasks_per_child`` is given, as in ``ProcessPoolExecutor``).
        initializer: Called with ``initargs`` in each worker before its first task. If it
            raises, the pool is broken at once (`BrokenProcessPool` naming the error).
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after it ran this many tasks.
        task_timeout: Default per-task timeout in seconds, counted from the task's start on a
            worker: a task past it is stopped (its worker is killed and replaced) and its future
            fails with ``TimeoutError``. ``schedule(..., timeout=)`` overrides it per task.
        rate: A rate a task (task mode) or its critical section (section mode) also waits
            for before it starts: a `RateLimiter`, a string such as ``"10/s"`` or a number
            per second (a new anonymous `RateLimiter` shared with the workers), or a
            `RedisRateLimiter`.

    Raises:
        ValueError: ``max_workers <= 0``, ``limit`` out of range or contradicting
            ``semaphore``, an unknown ``throttle``, a semaphore that is not crash-safe, or a
            non-positive timeout.
        TypeError: an argument of the wrong type.
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
        task_timeout: float | None = None,
        rate: object | None = None,
    ) -> None:
        if max_workers is None:
            workers = os.cpu_count() or 1
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        else:
            workers = max_workers
        limit = check_limit(limit)
        if semaphore is not None:
            if not isinstance(semaphore, ProcessSemaphore):
                raise TypeError(
                    f"semaphore must be a ProcessSemaphore, not {type(semaphore).__name__}"
                )
            if not semaphore.crash_safe:
                raise ValueError(
                    "semaphore must be crash-safe (ProcessSemaphore(..., crash_safe=True)): a "
                    "pool replaces workers that die, and the permit of a worker killed while "
                    "holding a crash_safe=False semaphore would be lost for good"
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
        self._task_timeout = _check_timeout("task_timeout", task_timeout)
        self._rate: object | None = sync_rate_limiter(rate)
        if mp_context is None:
            mp_context = _default_context(max_tasks_per_child)
        if getattr(multiprocessing.process.current_process(), "_inheriting", False):
            _worker.refuse_import_time_pool()  # a spawned worker is importing the main module

        sem = semaphore if semaphore is not None else ProcessSemaphore(limit)
        self._section = throttle == "section"
        self._max_workers = workers
        started = workers if self._section else min(workers, sem.limit)
        try:
            self._engine = Engine(
                workers=started,
                semaphore=sem,
                owns_semaphore=semaphore is None,
                section_mode=self._section,
                context=mp_context,
                initializer=initializer,
                initargs=initargs,
                max_tasks=max_tasks_per_child,
                rate=self._rate,
            )
        except BaseException:
            if semaphore is None:
                sem.close()
            raise
        self._sem = sem
        # Dropping the pool without shutdown() still finishes its queue, then stops the workers.
        weakref.finalize(self, self._engine.request_stop)

    # -- Executor API ------------------------------------------------------------------------
    @property
    def semaphore(self) -> ProcessSemaphore:
        """The semaphore that bounds the tasks (or sections)."""
        return self._sem

    @property
    def limit(self) -> int:
        """How many tasks (or sections) may run at once."""
        return self._sem.limit

    @property
    def rate(self) -> object | None:
        """The rate limiter given as ``rate=``, or None."""
        return self._rate

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return its future.

        Args:
            fn: A picklable callable (a module-level function).
            *args: Its positional arguments (picklable).
            **kwargs: Its keyword arguments (picklable).

        Returns:
            The task's future: a function or argument that cannot be pickled fails it with the
            original pickling exception (a hint is added as a note), not the pool.

        Raises:
            RuntimeError: after ``shutdown()`` or once the interpreter is shutting down.
            BrokenProcessPool: the pool is broken (its initializer failed).
        """
        return self._engine.submit(fn, args, kwargs, self._task_timeout)

    @overload
    def schedule(
        self,
        fn: Callable[[Unpack[Ts]], T],
        args: tuple[Unpack[Ts]] = ...,
        kwargs: None = None,
        *,
        timeout: float | None = None,
    ) -> Future[T]: ...
    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        args: Iterable[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> Future[T]: ...
    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        args: list[Any],
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Future[T]: ...
    def schedule(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` with its own timeout (pebble's ``schedule``).

        Args:
            fn: A picklable callable.
            args: Its positional arguments.
            kwargs: Its keyword arguments.
            timeout: Seconds the task may run once started on a worker (default: the pool's
                ``task_timeout``). Past it the task is stopped: its worker is killed and
                replaced, its future fails with ``TimeoutError``, and its permit comes back.

        Returns:
            The task's future.

        Raises:
            RuntimeError: after ``shutdown()``.
        """
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict or None, not {type(kwargs).__name__}")
        limit = self._task_timeout if timeout is None else _check_timeout("timeout", timeout)
        return self._engine.submit(fn, tuple(args), dict(kwargs or {}), limit)

    # Typed like the builtin map (typeshed): the items must fit fn. Executor.map takes any
    # iterables for any fn, which these overloads refuse on purpose, hence the ignore.
    @overload  # type: ignore[override]
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        /,
        *,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B], T],
        iterable1: Iterable[A],
        iterable2: Iterable[B],
        /,
        *,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A, B, C], T],
        iterable1: Iterable[A],
        iterable2: Iterable[B],
        iterable3: Iterable[C],
        /,
        *,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        iterable4: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]: ...
    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]:
        """Like ``Executor.map``: results in input order.

        Args:
            fn: A picklable callable taking one item of each iterable.
            *iterables: The arguments.
            timeout: Seconds (from this call) after which waiting for a result raises
                ``TimeoutError``.
            chunksize: Items sent as one task.
            buffersize: When given, the map is lazy: it holds at most this many pending items
                (chunks count ``chunksize`` items), so infinite iterators work.
            progress: A progress bar: True (tqdm's if installed, else a plain line on stderr;
                its total is the inputs' length when they have one), a dict of tqdm options
                (``desc``, ``position``, ``disable``, ...), or a bar of your own with
                ``update(n)`` (updated, not closed).

        Returns:
            An iterator of results. Leaving it early (an exception, a timeout, ``close()``,
            or dropping it) cancels every task that has not started.

        Raises:
            TypeError: ``chunksize`` or ``buffersize`` is not an int.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
            RuntimeError: after ``shutdown()``.
            BrokenProcessPool: the pool is broken (its initializer failed).
            TimeoutError: while iterating, once ``timeout`` has passed, or in place of the
                result of a task that ran past its task timeout.
            WorkerCrashedError: while iterating, in place of the result of a task whose
                worker died (as is the exception a task raised, in place of its result).
        """
        chunksize = check_positive("chunksize", chunksize)
        _optional_positive("buffersize", buffersize)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar, owned = open_bar(progress, total_of(iterables))  # bad progress: nothing submitted
        pending = self._submit_all(fn, iterables, chunksize, buffersize)
        results = collect(pending, deadline, chunksize > 1)
        return results if bar is None else with_progress(results, bar, owned)

    def _submit_all(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        chunksize: int,
        buffersize: int | None,
    ) -> Pending:
        single = len(iterables) == 1
        if single:  # chunks of items, not of 1-tuples: cheaper to build and to pickle
            calls: Iterator[Any] = iter(iterables[0])
            runner: Callable[..., Any] = _worker.call_chunk_single
        else:
            calls = zip(*iterables)  # noqa: B905 - shortest wins, as in Executor.map
            runner = _worker.call_chunk
        if chunksize == 1:
            units: Iterator[Any] = calls
        else:
            units = iter(lambda: list(itertools.islice(calls, chunksize)), [])
        ahead = None if buffersize is None else max(1, buffersize // chunksize)
        engine, limit = self._engine, self._task_timeout

        def submit(unit: Any) -> Future[Any]:
            if chunksize == 1:
                return engine.submit(fn, (unit,) if single else unit, {}, limit)
            return engine.submit(runner, (fn, unit), {}, limit)

        return Pending(submit, units, ahead)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; the queued ones still run unless cancelled.

        Args:
            wait: Wait until every task has finished and the workers have exited.
            cancel_futures: Cancel every task that has not started.
        """
        self._engine.shutdown(wait, cancel_futures)

    def stats(self) -> dict[str, int]:
        """Counters of this pool.

        Returns:
            ``submitted``, ``queued`` (not yet sent to a worker), ``sent`` (sent, not finished),
            ``running`` (started on a worker, not finished), ``completed``, ``failed``,
            ``cancelled``, ``crashed`` (failed by their worker's death), ``timed_out``,
            ``requeued`` (moved to another worker before they started), ``workers`` (alive),
            ``workers_started``, ``in_section`` (permits of the semaphore held now, by anyone)
            and ``max_in_section`` (the peak seen by this pool's workers).
        """
        return self._engine.stats()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``shutdown(wait=True)``; leaving through Ctrl-C (KeyboardInterrupt) also cancels
        every task that has not started, so the program stops once the running ones end."""
        cancel = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=cancel)

    # -- async API ------------------------------------------------------------------------------
    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await`` the task's result; cancelling the caller cancels the task if it has not
        started (and leaks no permit).

        Args:
            fn: A picklable callable.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``fn`` returned.

        Raises:
            RuntimeError: after ``shutdown()``.
            BrokenProcessPool: the pool is broken (its initializer failed).
            WorkerCrashedError: the task's worker died while running it.
            TimeoutError: the task ran past its task timeout.
            Exception: whatever ``fn`` raised, with the worker's traceback as ``__cause__``.
        """
        return await wait_future(self.submit(fn, *args, **kwargs))

    async def amap(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        progress: Progress = False,
    ) -> AsyncGenerator[T, None]:
        """Results of ``fn(item)`` in input order, with at most ``buffersize`` items pending.

        Args:
            fn: A picklable callable taking one item.
            iterable: The items (may be infinite).
            buffersize: Items pending at once (default: twice the workers, times chunksize).
            chunksize: Items sent as one task.
            progress: A progress bar, as for `map` (its total is the iterable's length when
                it has one).

        Yields:
            The results. Closing or cancelling the generator cancels the pending tasks.

        Raises:
            TypeError: ``chunksize`` or ``buffersize`` is not an int.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
            RuntimeError: after ``shutdown()``.
            BrokenProcessPool: the pool is broken (its initializer failed).
            WorkerCrashedError: an item's worker died while running it (raised in place of
                that item's result, as are the item's ``TimeoutError`` and its own
                exception).
        """
        buffersize = (
            _optional_positive("buffersize", buffersize) or 2 * self._max_workers * chunksize
        )
        chunksize = check_positive("chunksize", chunksize)
        bar, owned = open_bar(progress, total_of((iterable,)))
        pending = self._submit_all(fn, (iterable,), chunksize, buffersize)
        try:
            while (future := pending.next()) is not None:
                result = await wait_future(future)
                del future
                values = result if chunksize > 1 else [result]
                del result
                for value in values:
                    if bar is not None:
                        bar.update(1)
                    yield value
                del values
        finally:
            pending.cancel()
            if owned:
                bar.close()  # type: ignore[union-attr]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancel = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        await anyio.to_thread.run_sync(partial(self.shutdown, cancel_futures=cancel))
