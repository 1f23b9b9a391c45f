"""``ThrottledExecutor``: the same bound around any ``concurrent.futures.Executor``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from .._async._semaphore import SyncSemaphore
from .._kernel._semaphore import ProcessSemaphore
from .._rate._gates import sync_rate_limiter

T = TypeVar("T")
P = ParamSpec("P")


def _throttled_call(
    semaphore: SyncSemaphore | None,
    rate: Any,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """Runs where the task runs: the permit is held by the process (or thread) doing the work."""
    # ---- RATE GATE (ThrottledExecutor): the task waits for `rate=` here, before its permit.
    if rate is not None:
        rate.acquire()
    if semaphore is None:
        return fn(*args, **kwargs)
    semaphore.acquire()
    try:
        return fn(*args, **kwargs)
    finally:
        semaphore.release()


class ThrottledExecutor(Executor):
    """Wrap any executor so that at most ``limit`` of its submitted tasks run at once.

    The permit is taken in the worker — thread, process, or a Dask worker — right before the
    task runs and released when it ends, error or not. With a ProcessSemaphore the bound holds
    across the processes of this host; with a RedisSemaphore, across machines.

    Args:
        executor: The executor to wrap (``ThreadPoolExecutor``, ``ProcessPoolExecutor``, a Dask
            client's executor...).
        semaphore: An int limit (a new anonymous `ProcessSemaphore`), a `ProcessSemaphore`, any
            object with ``acquire()`` and ``release()``, or None for no concurrency bound
            (then ``rate`` must be given).
        rate: A rate each task also waits for, where it runs, before its permit: a
            `RateLimiter`, a string such as ``"10/s"`` or a number per second (a new anonymous
            `RateLimiter`: it reaches forked and spawned workers of this host), or a
            `RedisRateLimiter` (for workers on other machines).

    Raises:
        TypeError: a wrong type, or neither ``semaphore`` nor ``rate`` given.
    """

    def __init__(
        self,
        executor: Executor,
        semaphore: ProcessSemaphore | SyncSemaphore | int | None = None,
        *,
        rate: object | None = None,
    ):
        if not isinstance(executor, Executor) and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be an Executor, not {type(executor).__name__}")
        rate = sync_rate_limiter(rate)
        if semaphore is None:
            if rate is None:
                raise TypeError(
                    "ThrottledExecutor needs a semaphore (or an int limit), rate=, or both"
                )
        elif isinstance(semaphore, int) and not isinstance(semaphore, bool):
            semaphore = ProcessSemaphore(semaphore)
        elif not isinstance(semaphore, ProcessSemaphore | SyncSemaphore):
            raise TypeError(
                "semaphore must be an int limit, a ProcessSemaphore, or an object with "
                f"acquire() and release(), not {type(semaphore).__name__}"
            )
        self._executor = executor
        self._semaphore = semaphore
        self._rate = rate

    @property
    def executor(self) -> Executor:
        """The wrapped executor."""
        return self._executor

    @property
    def semaphore(self) -> ProcessSemaphore | SyncSemaphore | None:
        """The semaphore that bounds the tasks (None: rate only)."""
        return self._semaphore

    @property
    def rate(self) -> object | None:
        """The rate limiter given as ``rate=``, or None."""
        return self._rate

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Submit ``fn(*args, **kwargs)`` to the wrapped executor, throttled where it runs.

        Args:
            fn: The callable.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            The wrapped executor's future: it fails with what ``fn`` raised (the permit is
            released all the same).

        Raises:
            RuntimeError: the wrapped executor was shut down (as its ``submit`` raises).
        """
        return self._executor.submit(_throttled_call, self._semaphore, self._rate, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the wrapped executor down.

        Args:
            wait: Wait for its tasks.
            cancel_futures: Cancel the tasks that have not started.
        """
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)
