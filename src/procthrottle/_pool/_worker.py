"""What runs inside a ThrottledProcessPool worker: the task wrapper and critical_section()."""

from __future__ import annotations

import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._kernel._semaphore import ProcessSemaphore


class WorkerState:
    """Set once per worker process by the pool's initializer."""

    __slots__ = ("peak", "progress", "section_mode", "semaphore", "started")

    def __init__(
        self, semaphore: ProcessSemaphore, started: Any, progress: Any, peak: Any, section: bool
    ):
        self.semaphore = semaphore
        self.started = started  # shared array: slot -> pid of the worker running that slot
        self.progress = progress  # shared array: slot -> index of the batch's running task
        self.peak = peak  # shared value: the most permits seen held at once
        self.section_mode = section

    def enter(self) -> None:
        """Take a permit and record the peak number of holders seen."""
        sem, peak = self.semaphore, self.peak
        sem.acquire()
        if peak.value < sem.limit:  # once the peak is the limit, it can't grow: skip the read
            held = sem.limit - sem.value
            if held > peak.value:
                with peak.get_lock():
                    peak.value = max(peak.value, held)


_state: WorkerState | None = None
_in_task = False


def initialize(
    state: WorkerState, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> None:
    global _state
    _state = state
    if initializer is not None:
        initializer(*initargs)


def call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task that runs ``fn`` over a chunk of argument tuples (``map(chunksize=...)``)."""
    return [fn(*args) for args in chunk]


def run_batch(slot: int, payloads: list[bytes]) -> bytes:
    """Run pickled ``(fn, args, kwargs)`` tasks one after another in this worker.

    The slot is marked with our pid and the index of the running task, so the pool can tell
    which task was running if this process dies. In task mode the batch holds one permit
    throughout: its tasks run one at a time, so the bound holds just the same. Returns the
    pickled outcomes, each ``(True, result)`` or ``(False, exception)``, and the time taken.
    """
    global _in_task
    state = _state
    assert state is not None, "a pool task ran outside a ThrottledProcessPool worker"
    outcomes: list[tuple[bool, Any]] = []
    state.started[slot] = os.getpid()
    start = time.perf_counter()
    _in_task = True
    if not state.section_mode:
        state.enter()
    try:
        for index, payload in enumerate(payloads):
            state.progress[slot] = index
            try:
                fn, args, kwargs = pickle.loads(payload)
                outcomes.append((True, fn(*args, **kwargs)))
            except BaseException as exc:  # the task's own error, whatever it is
                outcomes.append((False, _RemoteError(exc)))
    finally:
        if not state.section_mode:
            state.semaphore.release()
        _in_task = False
        state.started[slot] = 0
    return _dump_outcomes(outcomes, time.perf_counter() - start)


class _RemoteError:
    """An exception with its worker-side traceback, rebuilt as ``__cause__`` in the parent
    (as ``ProcessPoolExecutor`` does)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_error, (self.exc, self.tb)


class RemoteTraceback(Exception):
    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def _rebuild_error(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _dump_outcomes(outcomes: list[tuple[bool, Any]], seconds: float) -> bytes:
    try:
        return pickle.dumps((outcomes, seconds), pickle.HIGHEST_PROTOCOL)
    except Exception:  # some result or exception can't be pickled: fail just that task
        safe = []
        for ok, value in outcomes:
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
                safe.append((ok, value))
            except Exception as exc:
                error = TypeError(
                    f"the task's {'result' if ok else 'exception'} {type(value).__name__!r} "
                    f"cannot be pickled back to the parent process: {exc}"
                )
                safe.append((False, error))
        return pickle.dumps((safe, seconds), pickle.HIGHEST_PROTOCOL)


def load_outcomes(data: bytes) -> tuple[list[tuple[bool, Any]], float]:
    outcomes, seconds = pickle.loads(data)
    return outcomes, seconds


@contextmanager
def critical_section() -> Iterator[None]:
    """Hold one permit of the pool's semaphore for the ``with`` block.

    Usable only inside a task of a :class:`ThrottledProcessPool`. With ``throttle="section"``
    at most ``limit`` tasks are inside it at once; with ``throttle="task"`` the whole task
    already holds a permit, so it does nothing.
    """
    state = _state
    if state is None or not _in_task:
        raise RuntimeError(
            "critical_section() is only usable inside a task running on a ThrottledProcessPool"
        )
    if not state.section_mode:
        yield
        return
    state.enter()
    try:
        yield
    finally:
        state.semaphore.release()
