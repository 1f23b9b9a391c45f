"""procthrottle: throttle work across processes, crash-safe, from sync code, asyncio and trio."""

from __future__ import annotations

from ._exceptions import ProcThrottleError as ProcThrottleError
from ._exceptions import SemaphoreClosedError as SemaphoreClosedError
from ._exceptions import WorkerCrashedError as WorkerCrashedError
from ._kernel._semaphore import ProcessSemaphore as ProcessSemaphore

__all__ = [
    "ProcThrottleError",
    "ProcessSemaphore",
    "SemaphoreClosedError",
    "WorkerCrashedError",
]
__version__ = "0.1.0"
