"""Records the pool's parent-side objects pass between them: a task, a worker; and constants."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from . import _wire
from ._futures import TaskFuture
from ._outbox import SMALL as SMALL
from ._outbox import Outbox
from ._worker import CLAIMED, EXIT_BAD_FRAME

logger = logging.getLogger("procthrottle")
logger.addHandler(logging.NullHandler())

#: A worker gets about this much work ahead (by the running average of task times)...
AHEAD_SECONDS = 0.005
#: ...at least this many tasks (the one it runs and the next), and at most this many.
MIN_DEPTH, MAX_DEPTH = 2, 256
#: A worker is sent no more while this many pickled bytes of its tasks are unfinished.
MAX_BYTES_AHEAD = 4 << 20
#: An idle worker takes queued tasks from a busy one whose current task has run this long.
STEAL_AFTER = 0.002
#: Workers that die before they are ready this many times in a row (per worker slot) break
#: the pool.
MAX_START_FAILURES = 3
PIPE_SIZE = 1 << 20

QUEUED, SENT, DONE, CANCELLED = range(4)

NO_MAIN_GUARD = (
    "the pool's worker processes could not start: the main module creates a "
    "ThrottledProcessPool when it is imported. Under the 'spawn' and 'forkserver' start "
    "methods every worker imports the main module, so start the pool under "
    "if __name__ == '__main__':"
)


class Task:
    __slots__ = ("args", "fn", "future", "kwargs", "nbytes", "seq", "state", "timeout", "worker")

    def __init__(
        self,
        future: TaskFuture[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs
        self.timeout = timeout
        self.state = QUEUED
        self.seq = 0
        self.nbytes = 0
        self.worker: Worker | None = None

    def end(self, state: int) -> None:
        """The task is over (DONE or CANCELLED): drop its call, which may be large."""
        self.state = state
        self.worker = None
        self.fn = self.args = self.kwargs = None  # type: ignore[assignment]


class Worker:
    """The parent's record of one worker process and the tasks it holds."""

    def __init__(self, process: Any, task_conn: Any, result_conn: Any, shared: Any, lock: Any):
        self.process, self.pid = process, process.pid
        self.task_conn, self.result_conn = task_conn, result_conn
        self.task_fd, self.result_fd = task_conn.fileno(), result_conn.fileno()
        self.reader = _wire.FrameReader(self.result_fd)
        self.shared, self.lock = shared, lock
        self.inflight: dict[int, Task] = {}  # seq -> task, in the order sent
        self.outbox = Outbox(self.task_fd)  # frames the task pipe has not taken yet
        self.next_seq = 1
        self.skipped = 0  # the worker said it read past every seq up to this one (SKIPPED)
        self.assigned = 0  # tasks sent and not revoked: max_tasks_per_child counts these
        self.bytes_ahead = 0
        self.ready = False
        self.dead = False
        self.init_error: bytes | None = None
        self.init_kind = 0  # the frame kind that brought init_error
        self.timed_out = 0  # seq of the task we killed this worker for

    def claimed(self) -> int:
        return int(self.shared[CLAIMED])

    def consumed(self) -> int:
        """The seq up to which the worker read its tasks (claimed, or skipped as revoked): the
        seqs after it are the ones whose revoked-ring slots it may still look at."""
        return max(int(self.shared[CLAIMED]), self.skipped)

    @contextlib.contextmanager
    def claims_stopped(self) -> Iterator[None]:
        """Hold the worker's claim lock, so it claims no task meanwhile (a dead worker, or one
        that died holding the lock, claims nothing anyway)."""
        locked = False
        if not self.dead:
            while not (locked := self.lock.acquire(timeout=0.05)):
                if not self.process.is_alive():  # it died holding the lock: claims stopped
                    break
        try:
            yield
        finally:
            if locked:
                self.lock.release()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "died of an unknown cause"
    if code == EXIT_BAD_FRAME:
        return (
            f"exited with code {code}: it received a malformed task frame (a procthrottle bug: "
            "please report it)"
        )
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} (os._exit, sys.exit or a fatal error)"


# (future, how, what): how is True (a result), False (an exception), or one of these two
# (a result frame, its payload still pickled: unpickled outside the pool's lock).
PICKLED_RESULT, PICKLED_ERROR = 2, 3
Resolution = tuple["Future[Any]", int, Any]
Planned = tuple[Worker, Task, int, tuple[Any, Any, Any]]  # (worker, task, seq, (fn, args, kwargs))


def earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(0.0, min(a, b))
