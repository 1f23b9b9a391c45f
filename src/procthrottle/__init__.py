"""procthrottle: throttle work across processes, crash-safe, from sync code, asyncio and trio.

The sync names (`ProcessSemaphore` and the exceptions) load with the package; the async, pool
and rate-limit names load on first use (PEP 562 ``__getattr__``), so that a sync script or a
CLI call does not pay for asyncio, anyio, ssl or `concurrent.futures.process`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._exceptions import ProcThrottleError as ProcThrottleError
from ._exceptions import SemaphoreClosedError as SemaphoreClosedError
from ._kernel._semaphore import ProcessSemaphore as ProcessSemaphore

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the docs
    from ._async._semaphore import AsyncSemaphore as AsyncSemaphore
    from ._async._throttle import throttle as throttle
    from ._pool._executor import ThrottledExecutor as ThrottledExecutor
    from ._pool._pool import ThrottledProcessPool as ThrottledProcessPool
    from ._pool._worker import critical_section as critical_section
    from ._rate._async import AsyncRateLimiter as AsyncRateLimiter
    from ._rate._limiter import RateLimiter as RateLimiter
    from ._worker_crashed import WorkerCrashedError as WorkerCrashedError

#: Each lazily loaded public name, and the module that defines it.
_LAZY = {
    "AsyncRateLimiter": "._rate._async",
    "AsyncSemaphore": "._async._semaphore",
    "RateLimiter": "._rate._limiter",
    "ThrottledExecutor": "._pool._executor",
    "ThrottledProcessPool": "._pool._pool",
    "WorkerCrashedError": "._worker_crashed",
    "critical_section": "._pool._worker",
    "throttle": "._async._throttle",
}

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


if not TYPE_CHECKING:  # hidden from type checkers, which would accept any name through it

    def __getattr__(name: str) -> object:
        """Load a lazy public name on first use (then it is a plain module attribute)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
