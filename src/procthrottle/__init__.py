"""procthrottle: throttle work across processes, crash-safe, from sync code, asyncio and trio."""

from __future__ import annotations

from ._async._semaphore import AsyncSemaphore as AsyncSemaphore
from ._async._throttle import throttle as throttle
from ._exceptions import ProcThrottleError as ProcThrottleError
from ._exceptions import SemaphoreClosedError as SemaphoreClosedError
from ._exceptions import WorkerCrashedError as WorkerCrashedError
from ._kernel._semaphore import ProcessSemaphore as ProcessSemaphore

__all__ = [
    "AsyncSemaphore",
    "ProcThrottleError",
    "ProcessSemaphore",
    "SemaphoreClosedError",
    "WorkerCrashedError",
    "throttle",
]
__version__ = "0.1.0"
