"""The package's own exceptions (bad arguments raise the builtin TypeError/ValueError)."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class ProcThrottleError(Exception):
    """Base class of procthrottle's own errors."""


class SemaphoreClosedError(ProcThrottleError):
    """The semaphore was used after ``close()``, or after it was unlinked from the host."""


class WorkerCrashedError(ProcThrottleError, BrokenProcessPool):
    """A task's worker process died while running it (signal or abrupt exit).

    The message names the signal (e.g. ``SIGKILL``) or exit code and the worker's pid. It also
    derives from `concurrent.futures.process.BrokenProcessPool`, whose stdlib meaning is "a
    worker process terminated abruptly", so ``except BrokenProcessPool`` clauses written for
    `ProcessPoolExecutor` keep catching it. Only the task whose worker died fails with it: the
    pool replaces the worker and goes on.
    """
