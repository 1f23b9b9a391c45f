"""The package's own exceptions (bad arguments raise the builtin TypeError/ValueError)."""

from __future__ import annotations


class ProcThrottleError(Exception):
    """Base class of procthrottle's own errors."""


class SemaphoreClosedError(ProcThrottleError):
    """The semaphore was used after ``close()``, or after it was unlinked from the host."""


class WorkerCrashedError(ProcThrottleError):
    """A task's worker process died while running it (signal or abrupt exit)."""
