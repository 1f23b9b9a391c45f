"""``ThrottledExecutor``: the same bound around any ``concurrent.futures.Executor``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from .._async._semaphore import SyncSemaphore
from .._kernel._semaphore import ProcessSemaphore

T = TypeVar("T")


def _throttled_call(
    semaphore: SyncSemaphore, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    """Runs where the task runs: the permit is held by the process (or thread) doing the work."""
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
    """

    def __init__(self, executor: Executor, semaphore: ProcessSemaphore | SyncSemaphore | int):
        if not isinstance(executor, Executor) and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be an Executor, not {type(executor).__name__}")
        if isinstance(semaphore, int) and not isinstance(semaphore, bool):
            semaphore = ProcessSemaphore(semaphore)
        elif not isinstance(semaphore, ProcessSemaphore | SyncSemaphore):
            raise TypeError(
                "semaphore must be an int limit, a ProcessSemaphore, or an object with "
                f"acquire() and release(), not {type(semaphore).__name__}"
            )
        self._executor = executor
        self._semaphore = semaphore

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def semaphore(self) -> ProcessSemaphore | SyncSemaphore:
        return self._semaphore

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._executor.submit(_throttled_call, self._semaphore, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)
