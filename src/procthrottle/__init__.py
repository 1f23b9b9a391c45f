"""procthrottle: throttle work across processes, crash-safe, from sync code, asyncio and trio."""

from __future__ import annotations

from ._async._semaphore import AsyncSemaphore as AsyncSemaphore
from ._async._throttle import throttle as throttle
from ._exceptions import ProcThrottleError as ProcThrottleError
from ._exceptions import SemaphoreClosedError as SemaphoreClosedError
from ._exceptions import WorkerCrashedError as WorkerCrashedError
from ._kernel._semaphore import ProcessSemaphore as ProcessSemaphore
from ._pool._executor import ThrottledExecutor as ThrottledExecutor
from ._pool._pool import ThrottledProcessPool as ThrottledProcessPool
from ._pool._worker import critical_section as critical_section
from ._rate._async import AsyncRateLimiter as AsyncRateLimiter
from ._rate._limiter import RateLimiter as RateLimiter

__all__ = [
    "AsyncRateLimiter",
    "AsyncSemaphore",
    "ProcThrottleError",
    "ProcessSemaphore",
    "RateLimiter",
    "SemaphoreClosedError",
    "ThrottledExecutor",
    "ThrottledProcessPool",
    "WorkerCrashedError",
    "critical_section",
    "throttle",
]
__version__ = "0.1.0"
