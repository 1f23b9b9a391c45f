"""``progress=`` of ``map`` and ``amap``: a tqdm bar when tqdm is installed, a plain one else.

``progress`` is ``False`` (none), ``True`` (a bar with the input's length as its total, when the
input has one), a dict of tqdm options (``desc``, ``position``, ``disable``, ``leave``, ...,
overriding the defaults), or a bar of the caller's own (anything with ``update(n)``: a tqdm
instance, a rich progress adapter...), which is updated but not closed: its owner closes it.

Without tqdm (a base install), ``True`` and a dict of the common options (``desc``, ``total``,
``disable``, ``unit``, ``file``, ``mininterval``) give `PlainBar`: one line on stderr, redrawn
at most ten times a second, ``desc: 37/50 tasks (74%) 2.1 s``. Other tqdm options need tqdm
and say so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Protocol, TypeVar, Union, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class ProgressBar(Protocol):
    """What ``map`` needs of a bar: ``update(n)`` (a tqdm bar has it)."""

    def update(self, n: int = 1) -> Any:
        """Count ``n`` more results."""


#: What ``progress=`` accepts.
Progress = Union[bool, Mapping[str, Any], ProgressBar]  # noqa: UP007 - a runtime alias on 3.10

PLAIN_OPTIONS = frozenset({"desc", "total", "disable", "unit", "file", "mininterval"})


class PlainBar:
    """A dependency-free progress line: ``desc: done/total unit (pct%) elapsed``."""

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str | None = None,
        disable: bool = False,
        unit: str = "task",
        file: IO[str] | None = None,
        mininterval: float = 0.1,
    ) -> None:
        self.total, self.desc, self.disable, self.unit = total, desc, disable, unit
        self.file = sys.stderr if file is None else file
        self.mininterval = mininterval
        self.n = 0
        self._start = self._shown = time.monotonic()
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._shown >= self.mininterval:
            self._shown = now
            self._draw()

    def close(self) -> None:
        self._draw()
        if not self.disable:
            self._write("\n")

    def line(self) -> str:
        """The text of the bar now."""
        count = f"{self.n} {self.unit}s" if self.total is None else (
            f"{self.n}/{self.total} {self.unit}s ({self.n * 100 // max(self.total, 1)}%)"
        )
        prefix = f"{self.desc}: " if self.desc else ""
        return f"{prefix}{count} {time.monotonic() - self._start:.1f} s"

    def _draw(self) -> None:
        if not self.disable:
            self._write("\r" + self.line())

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # the stream is closed: no bar, the results still come
            self.disable = True


def total_of(iterables: Iterable[object]) -> int | None:
    """How many calls ``map`` makes: the shortest input's length, if every input has one."""
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))  # type: ignore[arg-type]
        except TypeError:
            return None
    return min(lengths) if lengths else None


def open_bar(progress: Progress, total: int | None) -> tuple[ProgressBar | None, bool]:
    """The bar for ``progress`` and whether ``map`` closes it (not a bar the caller gave).

    Raises:
        TypeError: ``progress`` is none of the accepted kinds, or a tqdm option other than
            the plain bar's without tqdm installed.
    """
    if progress is False:
        return None, False
    if progress is True:
        options: dict[str, Any] = {}
    elif isinstance(progress, Mapping):
        options = dict(progress)
    elif isinstance(progress, ProgressBar) and not isinstance(progress, bool | int):
        if getattr(progress, "total", 0) is None and total is not None:
            progress.total = total  # type: ignore[attr-defined]  # a tqdm bar made without one
        return progress, False
    else:
        raise TypeError(
            "progress must be True, False, a dict of tqdm options (desc=, position=, "
            f"disable=, ...) or a progress bar with update(n), not {type(progress).__name__}"
        )
    options = {"unit": "task", "total": total, **options}
    try:
        from tqdm import tqdm
    except ImportError:
        unknown = sorted(set(options) - PLAIN_OPTIONS)
        if unknown:
            raise TypeError(
                f"progress option(s) {', '.join(unknown)} need tqdm: pip install "
                f"'procthrottle[progress]' (without it, progress takes {sorted(PLAIN_OPTIONS)})"
            ) from None
        return PlainBar(**options), True
    return tqdm(**options), True


def with_progress(results: Iterator[T], bar: ProgressBar, owned: bool) -> Iterator[T]:
    """``results``, counting each on the bar; an `owned` bar is closed when they end or are
    left."""
    try:
        for result in results:
            bar.update(1)
            yield result
    finally:
        if owned:
            bar.close()  # type: ignore[attr-defined]
