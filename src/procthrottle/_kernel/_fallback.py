"""The Windows kernel: ``multiprocessing.BoundedSemaphore``, neither named nor crash-safe.

Windows has no System V semaphores and no ``SEM_UNDO``; a permit held by a process that dies is
lost, and the semaphore can only be shared by inheritance (``Process(args=...)``, pool
``initializer``), not as an argument of ``ProcessPoolExecutor.submit``.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from .._exceptions import SemaphoreClosedError
from ._semaphore import ProcessSemaphore, announce_close, validate
from ._validate import DEFAULT_MODE, MAX_LIMIT, check_acquire, check_count, check_mode


class FallbackSemaphore(ProcessSemaphore):
    """``ProcessSemaphore`` where only ``multiprocessing.BoundedSemaphore`` is available."""

    __slots__ = ("_closed", "_limit", "_lock")

    _lock: Any

    def __init__(
        self,
        limit: int = 1,
        *,
        name: str | None = None,
        crash_safe: bool = True,
        mode: int = DEFAULT_MODE,
    ) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        check_mode(mode)
        if name is not None:
            raise NotImplementedError("named semaphores are not available on this platform")
        self._limit, self._closed = limit, False
        self._lock = multiprocessing.BoundedSemaphore(limit)

    def _check(self) -> None:
        if self._closed:
            raise SemaphoreClosedError("the semaphore was closed in this process")

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self._check()
        timeout = check_acquire(block, timeout)
        if timeout is not None and timeout < 0:
            timeout = 0.0
        return bool(self._lock.acquire(block, timeout))

    def release(self, n: int = 1) -> None:
        check_count(n)
        self._check()
        if self.value + n > self._limit:
            raise ValueError(f"release(n={n}) would raise the value above limit={self._limit}")
        for _ in range(n):
            self._lock.release()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def name(self) -> None:
        return None

    @property
    def crash_safe(self) -> bool:
        return False

    @property
    def value(self) -> int:
        self._check()
        value: int = self._lock.get_value()
        return value

    def close(self) -> None:
        self._closed = True
        announce_close(self)

    def unlink(self) -> None:
        self.close()

    def __getstate__(self) -> tuple[int, bool, Any]:
        return self._limit, self._closed, self._lock

    def __setstate__(self, state: tuple[int, bool, Any]) -> None:
        self._limit, self._closed, self._lock = state
