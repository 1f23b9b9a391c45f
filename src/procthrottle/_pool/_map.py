"""map() and amap() plumbing: futures in input order, submitted lazily, cancelled on exit."""

from __future__ import annotations

import concurrent.futures
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):  # one class
    MapTimeout = TimeoutError
else:  # pragma: no cover - Python 3.10

    class MapTimeout(concurrent.futures.TimeoutError, TimeoutError):
        """map()'s timeout: caught by ``except TimeoutError`` as by ``except
        concurrent.futures.TimeoutError`` (two classes before Python 3.11)."""


class Pending:
    """Futures of a map in input order, submitting one more unit as each is taken."""

    def __init__(
        self, submit: Callable[[Any], Future[Any]], units: Iterator[Any], ahead: int | None
    ) -> None:
        self._submit, self._units, self._ahead = submit, units, ahead
        first = units if ahead is None else itertools.islice(units, ahead)
        self._futures: deque[Future[Any]] = deque()
        try:
            for unit in first:
                self._futures.append(submit(unit))
        except BaseException:
            self.cancel()
            raise

    def __bool__(self) -> bool:
        return bool(self._futures)

    def next(self) -> Future[Any] | None:
        if not self._futures:
            return None
        future = self._futures.popleft()
        if self._ahead is not None:
            for unit in itertools.islice(self._units, 1):
                self._futures.append(self._submit(unit))
        return future

    def cancel(self) -> None:
        while self._futures:
            self._futures.pop().cancel()  # the last first: none of them starts meanwhile


def collect(pending: Pending, deadline: float | None, chunked: bool) -> Iterator[Any]:
    """Yield results in order; leaving early cancels what has not started. Holds no result
    and no future while it waits for the caller (as ``Executor.map``)."""
    try:
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if chunked:
                chunk: list[Any] = _result_or_cancel(pending.next(), remaining)
                chunk.append(_END)
                chunk.reverse()
                # pop() each item as it is yielded (none is kept alive), in a C-level loop
                yield from iter(chunk.pop, _END)
                del chunk
            else:
                yield _result_or_cancel(pending.next(), remaining)
    finally:
        pending.cancel()


_END = object()


def _result_or_cancel(future: Future[Any] | None, timeout: float | None) -> Any:
    assert future is not None
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        if isinstance(exc, TimeoutError):
            raise
        raise MapTimeout(*exc.args) from None  # pragma: no cover - Python 3.10
    finally:
        future.cancel()

