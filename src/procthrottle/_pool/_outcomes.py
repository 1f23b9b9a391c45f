"""How each of the pool's tasks ended, and the futures told so: the one place a task ends.

Every end of a task -- a result or an exception read from its worker, a crash, a timeout, an
argument that does not pickle, a cancel, a broken pool -- goes through `Outcomes`, which books
it (counters) and keeps the future's outcome in ``pending`` until `deliver` sets it, outside the
pool's lock (callbacks may submit). So "every future the manager touched gets resolved" is
enforced here: nothing else sets a future, `deliver` resolves each pending outcome whatever the
others do, and the manager delivers what is pending even when it fails.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from . import _wire
from ._records import CANCELLED, DONE, PICKLED_ERROR, PICKLED_RESULT, Resolution, Task, logger

COUNTERS = (
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "crashed",
    "timed_out",
    "requeued",
    "workers_started",
)
_PAYLOAD = _wire.RESULT.size


class Outcomes:
    """The counters and the outcomes not yet delivered (see the module docstring).

    Booking (`result`, `fail`, `cancel`) happens under the pool's lock; `deliver` runs on the
    manager thread without it.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.pending: list[Resolution] = []

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def pending_count(self) -> int:
        return len(self.pending)

    def results(self, done: list[tuple[Task, bool, _wire.Frame]]) -> None:
        """Workers sent these tasks' results (``ok``) or exceptions, still pickled."""
        append = self.pending.append
        completed = 0
        for task, ok, body in done:
            task.state = DONE
            task.worker = None
            task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
            completed += ok
            append((task.future, PICKLED_RESULT if ok else PICKLED_ERROR, body))
        self.counts["completed"] += completed
        self.counts["failed"] += len(done) - completed

    def fail(self, task: Task, exc: BaseException, why: str | None = None) -> None:
        """The task ends with ``exc`` (``why``: the counter of the cause, e.g. ``crashed``)."""
        task.end(DONE)
        self.counts["failed"] += 1
        if why is not None:
            self.counts[why] += 1
        self.pending.append((task.future, False, exc))

    def fail_all(self, tasks: Iterable[Task], broken: BrokenProcessPool) -> None:
        for task in tasks:
            error = BrokenProcessPool(str(broken))
            error.__cause__ = broken.__cause__
            self.fail(task, error)

    def cancel(self, task: Task) -> None:
        """The task will never run; the caller cancels its future (`cancel_and_notify`)
        once it released the lock."""
        task.end(CANCELLED)
        self.counts["cancelled"] += 1

    def deliver(self) -> None:
        """Set every pending outcome (manager thread, without the lock). Each future is
        resolved whatever happens to the others: an outcome that cannot be set as it is (it
        does not unpickle, or something fails on the way) fails its future instead."""
        while self.pending:
            batch, self.pending = self.pending, []
            for future, how, value in batch:
                try:
                    self._set(future, how, value)
                except BaseException as exc:  # pragma: no cover - a bug of ours, not the task's
                    logger.exception("procthrottle: could not set a task's outcome")
                    broken = BrokenProcessPool(f"the pool could not deliver this outcome: {exc!r}")
                    broken.__cause__ = exc
                    _set_quietly(future, broken)
            del batch

    def _set(self, future: Future[Any], how: int, value: Any) -> None:
        ok = how == PICKLED_RESULT or how is True
        if how >= PICKLED_RESULT:  # a result frame, still pickled
            data = memoryview(value)[_PAYLOAD:]
            try:
                value = pickle.loads(data) if ok else _wire.decode_error(bytes(data))
            except BaseException as exc:
                _wire.add_note(
                    exc,
                    "procthrottle: the task's "
                    + ("result" if ok else "exception")
                    + " cannot be unpickled in the parent process",
                )
                if ok:
                    with self.lock:
                        self.counts["completed"] -= 1
                        self.counts["failed"] += 1
                ok, value = False, exc
            del data
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except InvalidStateError:  # cancelled meanwhile (only a revoked task can be)
            pass


def _set_quietly(future: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(BaseException):  # already resolved after all
        future.set_exception(exc)
