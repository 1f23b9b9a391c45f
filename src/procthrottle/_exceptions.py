"""The package's own exceptions (bad arguments raise the builtin TypeError/ValueError)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker_crashed import WorkerCrashedError as WorkerCrashedError


class ProcThrottleError(Exception):
    """Base class of procthrottle's own errors."""


class SemaphoreClosedError(ProcThrottleError):
    """The semaphore was used after ``close()``, or after it was unlinked from the host."""


if not TYPE_CHECKING:  # hidden from type checkers, which would accept any name through it

    def __getattr__(name: str) -> object:
        # `WorkerCrashedError` lives in its own module (it imports `concurrent.futures.process`);
        # ``from .._exceptions import WorkerCrashedError`` keeps working.
        if name == "WorkerCrashedError":
            from ._worker_crashed import WorkerCrashedError

            return WorkerCrashedError
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
