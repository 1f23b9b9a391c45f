"""What runs inside a ThrottledProcessPool worker: the task wrapper and critical_section()."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._kernel._semaphore import ProcessSemaphore


class WorkerState:
    """Set once per worker process by the pool's initializer."""

    __slots__ = ("peak", "section_mode", "semaphore", "started")

    def __init__(self, semaphore: ProcessSemaphore, started: Any, peak: Any, section: bool):
        self.semaphore = semaphore
        self.started = started  # shared array: slot -> pid of the worker running that slot
        self.peak = peak  # shared value: the most permits seen held at once
        self.section_mode = section

    def enter(self) -> None:
        """Take a permit and record the peak number of holders seen."""
        sem = self.semaphore
        sem.acquire()
        held = sem.limit - sem.value
        peak = self.peak
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


def run_task(slot: int, payload: bytes) -> Any:
    """Run one pickled ``(fn, args, kwargs)``."""
    fn, args, kwargs = pickle.loads(payload)
    return _run(slot, fn, args, kwargs)


def run_chunk(slot: int, payload: bytes) -> list[Any]:
    """Run ``fn`` over a pickled chunk of argument tuples; each call is one task."""
    fn, chunk = pickle.loads(payload)
    return [_run(slot, fn, args, {}) for args in chunk]


def _run(slot: int, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Mark the slot with our pid while the task runs; in task mode, hold a permit."""
    global _in_task
    state = _state
    assert state is not None, "a pool task ran outside a ThrottledProcessPool worker"
    state.started[slot] = os.getpid()
    _in_task = True
    try:
        if state.section_mode:
            return fn(*args, **kwargs)
        state.enter()
        try:
            return fn(*args, **kwargs)
        finally:
            state.semaphore.release()
    finally:
        _in_task = False
        state.started[slot] = 0


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
