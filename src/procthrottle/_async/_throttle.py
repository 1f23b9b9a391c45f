"""``@throttle``: bound how many calls of a function run at once, across processes."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_limit, check_timeout
from ._semaphore import AsyncSemaphore, SyncSemaphore

P = ParamSpec("P")
R = TypeVar("R")


class _Adapters:
    """The AsyncSemaphore of a ProcessSemaphore, made on first use in each process."""

    def __init__(self, semaphore: ProcessSemaphore) -> None:
        self.semaphore = semaphore
        self._async: AsyncSemaphore | None = None
        self._lock = threading.Lock()

    def get(self) -> AsyncSemaphore:
        if self._async is None:
            with self._lock:
                if self._async is None:
                    self._async = AsyncSemaphore(self.semaphore)
        return self._async


def throttle(
    limit_or_semaphore: int | ProcessSemaphore | AsyncSemaphore, *, timeout: float | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let at most ``limit`` calls of the decorated function run at once.

    Works on ``async def`` functions (awaiting an :class:`AsyncSemaphore`, never blocking the
    loop) and on plain functions (blocking), including methods. An ``int`` makes an anonymous
    :class:`ProcessSemaphore`, shared with forked children; pass a named one to hold the bound
    across unrelated processes. Raises ``TimeoutError`` if no permit came within ``timeout``.
    A decorated module-level function stays picklable for process pools.
    """
    timeout = check_timeout(timeout)
    get_async: Callable[[], AsyncSemaphore]
    sync_sem: ProcessSemaphore | SyncSemaphore
    if isinstance(limit_or_semaphore, AsyncSemaphore):
        async_sem = limit_or_semaphore
        sync_sem = async_sem.semaphore

        def get_async() -> AsyncSemaphore:
            return async_sem

    elif isinstance(limit_or_semaphore, int | ProcessSemaphore) and not isinstance(
        limit_or_semaphore, bool
    ):
        if isinstance(limit_or_semaphore, int):
            limit_or_semaphore = ProcessSemaphore(check_limit(limit_or_semaphore))
        sync_sem = limit_or_semaphore
        get_async = _Adapters(limit_or_semaphore).get
    else:
        raise TypeError(
            "limit_or_semaphore must be an int, a ProcessSemaphore or an AsyncSemaphore, "
            f"not {type(limit_or_semaphore).__name__}"
        )

    def too_slow(fn: Callable[..., Any]) -> TimeoutError:
        return TimeoutError(f"no permit to call {fn.__qualname__} within {timeout} s")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            call_async: Callable[P, Awaitable[Any]] = fn

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                sem = get_async()
                if not await sem.acquire(timeout=timeout):
                    raise too_slow(fn)
                try:
                    return await call_async(*args, **kwargs)
                finally:
                    sem.release()

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not sync_sem.acquire(True, timeout):
                raise too_slow(fn)
            try:
                return fn(*args, **kwargs)
            finally:
                sync_sem.release()

        return wrapper

    return decorate

