"""``@throttle``: bound how many calls of a function run at once, across processes."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import check_limit, check_timeout
from .._rate._gates import rate_gate
from ._semaphore import AsyncSemaphore, SyncSemaphore

F = TypeVar("F", bound=Callable[..., Any])


class _Adapter:
    """The AsyncSemaphore of a semaphore, made on first use (it is cheap: every adapter over
    one semaphore shares one core and one waiter thread)."""

    __slots__ = ("_async", "semaphore")

    def __init__(self, semaphore: ProcessSemaphore | SyncSemaphore) -> None:
        self.semaphore = semaphore
        self._async: AsyncSemaphore | None = None

    def get(self) -> AsyncSemaphore:
        adapter = self._async
        if adapter is None:
            adapter = self._async = AsyncSemaphore(self.semaphore)
        return adapter


def _is_async_callable(fn: Any) -> bool:
    """``async def`` functions, partials of them, and objects with an ``async def __call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return (
        not inspect.isfunction(fn)
        and not inspect.ismethod(fn)
        and call is not None
        and inspect.iscoroutinefunction(call)
    )


def throttle(
    limit_or_semaphore: int | ProcessSemaphore | AsyncSemaphore | None = None,
    *,
    rate: Any = None,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Let at most ``limit`` calls of the decorated callable run at once, across processes.

    Works on ``async def`` functions and objects with an ``async def __call__`` (awaiting an
    `AsyncSemaphore`, never blocking the loop), on plain functions (blocking), and on instance,
    static and class methods (in either decorator order with ``@staticmethod`` /
    ``@classmethod``). Generator functions, async or not, are refused: calling one only makes
    the generator, and a permit held for a generator's whole life would outlive a consumer
    that stops iterating early; put ``async with sem:`` (or ``with sem:``) around the part of
    the body that needs the bound instead.

    An ``int`` makes an anonymous `ProcessSemaphore`, shared with forked children; pass a named
    one to hold the bound across unrelated processes. A decorated module-level function stays
    picklable, so it can be submitted to process pools.

    Args:
        limit_or_semaphore: An `int` limit, a `ProcessSemaphore` or an `AsyncSemaphore`.
        rate: A rate each call also waits for, after it got its permit (so the calls *start*
            at the rate): a `RateLimiter`, an `AsyncRateLimiter`, a string such as ``"10/s"``
            or a number per second (a new anonymous `RateLimiter`, shared with forked children
            like an ``int`` limit), a `RedisRateLimiter` (sync functions) or an
            `AsyncRedisRateLimiter`; or None. Async functions sleep on the event loop.
        timeout: Seconds to wait for the permit (and the rate) at most; None waits forever.

    Returns:
        The decorator.

    Raises:
        TypeError: Bad arguments, a bare ``@throttle`` (use ``@throttle(N)``), or an async
            generator function.
        ValueError: A limit below 1 or a NaN timeout.
        TimeoutError: (From a decorated call) no permit came within ``timeout``.
    """
    if callable(limit_or_semaphore) and not isinstance(
        limit_or_semaphore, AsyncSemaphore | ProcessSemaphore
    ):
        raise TypeError(
            "throttle needs a limit: use @throttle(N) (or @throttle(semaphore), "
            "@throttle(rate=...)), not a bare @throttle"
        )
    gate = rate_gate(rate)
    if limit_or_semaphore is None and gate is None:
        raise TypeError(
            "throttle needs a limit, a semaphore or a rate: use @throttle(N), "
            "@throttle(semaphore) or @throttle(rate=limiter)"
        )
    timeout = check_timeout(timeout)
    take_rate = None if gate is None else gate.sync
    adapter: _Adapter | None
    sync_sem: ProcessSemaphore | SyncSemaphore | None
    if limit_or_semaphore is None:
        adapter = sync_sem = None
    elif isinstance(limit_or_semaphore, AsyncSemaphore):
        sync_sem = limit_or_semaphore.semaphore
        adapter = _Adapter(sync_sem)
        adapter._async = limit_or_semaphore
    elif isinstance(limit_or_semaphore, int | ProcessSemaphore) and not isinstance(
        limit_or_semaphore, bool
    ):
        if isinstance(limit_or_semaphore, int):
            limit_or_semaphore = ProcessSemaphore(check_limit(limit_or_semaphore))
        sync_sem = limit_or_semaphore
        adapter = _Adapter(sync_sem)
    else:
        raise TypeError(
            "limit_or_semaphore must be an int, a ProcessSemaphore or an AsyncSemaphore, "
            f"not {type(limit_or_semaphore).__name__}"
        )

    def decorate(fn: F) -> F:
        if isinstance(fn, staticmethod):
            return staticmethod(decorate(fn.__func__))  # type: ignore[return-value]
        if isinstance(fn, classmethod):
            return classmethod(decorate(fn.__func__))
        if not callable(fn):
            raise TypeError(f"throttle decorates callables, not {type(fn).__name__}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            kind, inside = (
                ("async generator", "`async with sem:` (an AsyncSemaphore)")
                if inspect.isasyncgenfunction(fn)
                else ("generator", "`with sem:` (a ProcessSemaphore)")
            )
            raise TypeError(
                f"@throttle cannot bound the {kind} function {_name(fn)}: calling it only "
                "makes the generator, and a permit held for the generator's whole life would "
                f"leak when a consumer stops early. Use {inside} inside the generator instead"
            )
        if _is_async_callable(fn):
            if gate is not None and not gate.awaitable:
                raise TypeError(
                    f"rate={gate.limiter!r} blocks, so it cannot bound the async function "
                    f"{_name(fn)}: pass a RateLimiter or an AsyncRedisRateLimiter instead"
                )
            return _wrap_async(fn)  # type: ignore[return-value]
        if gate is not None and take_rate is None:
            raise TypeError(
                f"rate={gate.limiter!r} can only be awaited, so it cannot bound the function "
                f"{_name(fn)}: pass a RateLimiter instead"
            )
        return _wrap_sync(fn)  # type: ignore[return-value]

    def too_slow(fn: Callable[..., Any]) -> TimeoutError:
        within = "at once (timeout <= 0)" if timeout is not None and timeout <= 0 else (
            f"within {timeout} s"
        )
        return TimeoutError(f"no permit to call {_name(fn)} {within}")

    def _wrap_async(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            sem = adapter.get() if adapter is not None else None
            deadline = None if timeout is None else time.monotonic() + timeout
            if sem is not None and not await sem.acquire(timeout=timeout):
                raise too_slow(fn)
            try:
                if gate is not None and not await gate.wait(_left(deadline)):
                    raise too_slow(fn)
                return await fn(*args, **kwargs)
            finally:
                if sem is not None:
                    sem.release()

        return async_wrapper

    def _wrap_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            deadline = None if timeout is None else time.monotonic() + timeout
            if sync_sem is not None and not sync_sem.acquire(True, timeout):
                raise too_slow(fn)
            try:
                if take_rate is not None and not take_rate(_left(deadline)):
                    raise too_slow(fn)
                return fn(*args, **kwargs)
            finally:
                if sync_sem is not None:
                    sync_sem.release()

        return wrapper

    return decorate


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
