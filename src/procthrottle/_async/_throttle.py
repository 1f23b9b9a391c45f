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
from . import _throttled
from ._semaphore import AsyncSemaphore, SyncSemaphore
from ._throttled import Adapter, Limits, Throttled

F = TypeVar("F", bound=Callable[..., Any])


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
    name: str | None = None,
) -> Callable[[F], F]:
    """Let at most ``limit`` calls of the decorated callable run at once, across processes.

    Works on ``async def`` functions and objects with an ``async def __call__`` (awaiting an
    `AsyncSemaphore`, never blocking the loop), on plain functions (blocking), and on instance,
    static and class methods (in either decorator order with ``@staticmethod`` /
    ``@classmethod``). Generator functions, async or not, are refused: calling one only makes
    the generator, and a permit held for a generator's whole life would outlive a consumer
    that stops iterating early; put ``async with sem:`` (or ``with sem:``) around the part of
    the body that needs the bound instead. A plain function that returns a coroutine (or any
    awaitable) is refused at its first call, the permit given back: its work would run after
    the permit was released; make it an ``async def``.

    **Across processes.** An ``int`` makes an anonymous `ProcessSemaphore`; ``name="api"``
    makes it the host-wide semaphore ``api`` instead (every process on the host that decorates
    with that name shares it: the one-line host-wide bound). A decorated module-level function
    pickles by name *with* its semaphore and rate limiter, so the bound holds in every process
    it reaches: forked children, and pool workers under fork, spawn and forkserver that receive
    it (``pool.submit(fn, ...)``, ``Process(target=fn)``). A process started by
    `multiprocessing` that only imported the function's module (and so made an anonymous
    semaphore or rate limiter of its own: from an ``int``, a string rate, or an explicit
    ``ProcessSemaphore(1)`` / ``AsyncSemaphore(1)`` / ``RateLimiter(...)`` at module level)
    raises `ProcThrottleError` at its first call instead of running with a bound of its own,
    and refuses to send the function on (to its own pool, or to a child it forks). Functions
    made by a factory (``make(1)``, a ``<locals>`` name) cannot be sent and are not checked:
    give them a named bound if they run in processes that import them.

    Args:
        limit_or_semaphore: An `int` limit, a `ProcessSemaphore` or an `AsyncSemaphore`.
        rate: A rate each call waits for *before* it takes its permit (so the calls start at
            the rate, and no permit is held while sleeping for a rate slot): a `RateLimiter`,
            an `AsyncRateLimiter`, a string such as ``"10/s"`` or a number per second (a new
            anonymous `RateLimiter`, which travels with the function like an ``int`` limit's
            semaphore), a `RedisRateLimiter` (sync functions) or an `AsyncRedisRateLimiter`;
            or None. Async functions sleep on the event loop.
        timeout: Seconds to wait for the rate and the permit together at most; None waits
            forever. A rate slot, once taken, is used even if the permit then does not come.
        name: With an ``int`` limit: the host-wide name of its semaphore (created with that
            limit, or joined; `ProcessSemaphore`'s naming rules). It stays on the host until
            removed (``procthrottle unlink NAME``), like any named semaphore.

    Returns:
        The decorator.

    Raises:
        TypeError: Bad arguments, a bare ``@throttle`` (use ``@throttle(N)``), ``name=``
            without an ``int`` limit, or a generator function.
        ValueError: A limit below 1, a bad name, a NaN timeout, or ``name`` existing with
            another limit.
        TimeoutError: (From a decorated call) no rate slot and permit came within ``timeout``.
        ProcThrottleError: (From a decorated call) see "Across processes" above.
    """
    if callable(limit_or_semaphore) and not isinstance(
        limit_or_semaphore, AsyncSemaphore | ProcessSemaphore
    ):
        raise TypeError(
            "throttle needs a limit: use @throttle(N) (or @throttle(semaphore), "
            "@throttle(rate=...)), not a bare @throttle"
        )
    if name is not None and (
        not isinstance(limit_or_semaphore, int) or isinstance(limit_or_semaphore, bool)
    ):
        raise TypeError(
            "name= names the semaphore that throttle makes from an int limit: use "
            f"@throttle(N, name={name!r}); a ProcessSemaphore or AsyncSemaphore has its own name"
        )
    gate = rate_gate(rate)
    if limit_or_semaphore is None and gate is None:
        raise TypeError(
            "throttle needs a limit, a semaphore or a rate: use @throttle(N), "
            "@throttle(semaphore) or @throttle(rate=limiter)"
        )
    shown = ", ".join(
        [repr(limit_or_semaphore)] * (limit_or_semaphore is not None)
        + [f"rate={rate!r}"] * (rate is not None)
        + [f"name={name!r}"] * (name is not None)
    )
    timeout = check_timeout(timeout)
    made_rate = gate is not None and isinstance(rate, str | int | float)
    adapter: Adapter | None
    sync_sem: ProcessSemaphore | SyncSemaphore | None
    made_sem = False
    if limit_or_semaphore is None:
        adapter = sync_sem = None
    elif isinstance(limit_or_semaphore, AsyncSemaphore):
        sync_sem = limit_or_semaphore.semaphore
        adapter = Adapter(sync_sem)
        adapter._async = limit_or_semaphore
    elif isinstance(limit_or_semaphore, int | ProcessSemaphore) and not isinstance(
        limit_or_semaphore, bool
    ):
        if isinstance(limit_or_semaphore, int):
            made_sem = name is None
            limit_or_semaphore = ProcessSemaphore(check_limit(limit_or_semaphore), name=name)
        sync_sem = limit_or_semaphore
        adapter = Adapter(sync_sem)
    else:
        raise TypeError(
            "limit_or_semaphore must be an int, a ProcessSemaphore or an AsyncSemaphore, "
            f"not {type(limit_or_semaphore).__name__}"
        )
    limits = Limits(sync_sem, adapter, gate, made_sem=made_sem, made_rate=made_rate,
                    what=f"@throttle({shown})")

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
            wrapper = _wrap_async(fn, limits, timeout)
        else:
            if gate is not None and gate.sync is None:
                raise TypeError(
                    f"rate={gate.limiter!r} can only be awaited, so it cannot bound the "
                    f"function {_name(fn)}: pass a RateLimiter instead"
                )
            wrapper = _wrap_sync(fn, limits, timeout)
        throttled = Throttled(wrapper)
        functools.update_wrapper(throttled, fn)
        throttled._limits = limits
        return throttled  # type: ignore[return-value]

    return decorate


def _wrap_async(fn: Callable[..., Any], limits: Limits, timeout: float | None) -> Any:
    module_level = "<locals>" not in _name(fn)
    where = f"{getattr(fn, '__module__', '?')}.{_name(fn)}"

    async def throttled(*args: Any, **kwargs: Any) -> Any:
        if module_level and limits.checked != _throttled.forks:
            limits.check_shared(where)
        adapter, gate = limits.adapter, limits.gate  # one pair per call (see Limits.adopt)
        deadline = None if timeout is None else time.monotonic() + timeout
        # the rate first: no permit is held while sleeping for a rate slot
        if gate is not None and not await gate.wait(timeout):
            raise _too_slow(fn, timeout)
        sem = None if adapter is None else adapter.get()
        if sem is not None and not await sem.acquire(timeout=_left(deadline)):
            raise _too_slow(fn, timeout)
        try:
            return await fn(*args, **kwargs)
        finally:
            if sem is not None:
                sem.release()

    return throttled


def _wrap_sync(fn: Callable[..., Any], limits: Limits, timeout: float | None) -> Any:
    module_level = "<locals>" not in _name(fn)
    where = f"{getattr(fn, '__module__', '?')}.{_name(fn)}"

    def throttled(*args: Any, **kwargs: Any) -> Any:
        if module_level and limits.checked != _throttled.forks:
            limits.check_shared(where)
        sem, gate = limits.sem, limits.gate  # one pair per call (see Limits.adopt)
        take_rate = None if gate is None else gate.sync
        deadline = None if timeout is None else time.monotonic() + timeout
        # the rate first: no permit is held while sleeping for a rate slot
        if take_rate is not None and not take_rate(timeout):
            raise _too_slow(fn, timeout)
        if sem is not None and not sem.acquire(True, _left(deadline)):
            raise _too_slow(fn, timeout)
        try:
            result = fn(*args, **kwargs)
        finally:
            if sem is not None:
                sem.release()
        kind = type(result)
        if kind not in _NOT_AWAITABLE and _awaitable(kind):  # a coroutine, future, task...
            _discard(result)
            raise TypeError(
                f"{_name(fn)} is a plain function that returned {type(result).__name__}: "
                "@throttle would give its permit back before that awaitable runs. Make it an "
                f"`async def` that awaits the work (async def {_name(fn).rpartition('.')[2]}"
                "(...): return await ...), and @throttle holds the permit until it is done"
            )
        return result

    return throttled


#: Result types seen not to be awaitable (a failed hasattr costs more than the whole call).
_NOT_AWAITABLE: set[type] = {type(None), int, str, bytes, float, bool, list, dict, tuple}


def _awaitable(kind: type) -> bool:
    if hasattr(kind, "__await__"):
        return True
    if len(_NOT_AWAITABLE) < 1000:
        _NOT_AWAITABLE.add(kind)
    return False


def _discard(awaitable: Any) -> None:
    """Close a coroutine that will never run (no 'never awaited' warning); leave others be."""
    close = getattr(awaitable, "close", None)
    if inspect.iscoroutine(awaitable) and close is not None:
        close()


def _too_slow(fn: Callable[..., Any], timeout: float | None) -> TimeoutError:
    within = "at once (timeout <= 0)" if timeout is not None and timeout <= 0 else (
        f"within {timeout} s"
    )
    return TimeoutError(f"no permit to call {_name(fn)} {within}")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
