"""progress= of map and amap: a total where the input has a length, tqdm's options, a bar of
the caller's own, and a plain bar when tqdm is not installed."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from procthrottle import ThrottledProcessPool


def square(x: int) -> int:
    return x * x


@pytest.fixture(scope="module")
def pool() -> Iterator[ThrottledProcessPool]:
    with ThrottledProcessPool(2, limit=2) as pool:
        yield pool


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a base install: ``import tqdm`` fails."""
    monkeypatch.setitem(sys.modules, "tqdm", None)


class OwnBar:
    """A bar of the caller's own, made without a total (as ``tqdm()`` can be)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.n = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(60)
def test_tqdm_bar_has_the_total_and_takes_options(pool: ThrottledProcessPool) -> None:
    out = io.StringIO()
    options = {"file": out, "desc": "squares", "mininterval": 0, "ascii": True}
    assert list(pool.map(square, range(50), progress=options)) == [x * x for x in range(50)]
    last = out.getvalue().split("\r")[-1]
    assert "squares" in last
    assert "50/50" in last
    assert "100%" in last
    silent = io.StringIO()
    assert len(list(pool.map(square, range(5), progress={"file": silent, "disable": True}))) == 5
    assert silent.getvalue() == ""


@pytest.mark.timeout(60)
def test_no_total_for_an_input_without_a_length(pool: ThrottledProcessPool) -> None:
    out = io.StringIO()
    items = (x for x in range(7))
    assert len(list(pool.map(square, items, progress={"file": out, "mininterval": 0}))) == 7
    assert "7task" in out.getvalue().replace(" ", "")


@pytest.mark.timeout(60)
def test_a_bar_of_your_own_is_updated_given_its_total_and_not_closed(
    pool: ThrottledProcessPool,
) -> None:
    bar = OwnBar()
    assert len(list(pool.map(square, [1, 2, 3], progress=bar))) == 3
    assert (bar.total, bar.n, bar.closed) == (3, 3, False)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_tqdm")
def test_without_tqdm_a_plain_bar(pool: ThrottledProcessPool) -> None:
    out = io.StringIO()
    results = list(pool.map(square, range(50), progress={"file": out, "desc": "squares"}))
    assert len(results) == 50
    assert out.getvalue().split("\r")[-1].startswith("squares: 50/50 tasks (100%)")
    with pytest.raises(TypeError, match=r"position.*need tqdm.*procthrottle\[progress\]"):
        list(pool.map(square, range(3), progress={"position": 1}))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_tqdm")
def test_progress_true_works_without_tqdm(
    pool: ThrottledProcessPool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(list(pool.map(square, range(4), progress=True))) == 4

    async def consume() -> list[Any]:
        return [r async for r in pool.amap(square, range(6), progress=True)]

    assert len(anyio.run(consume)) == 6
    err = capsys.readouterr().err
    assert "4/4 tasks (100%)" in err
    assert "6/6 tasks (100%)" in err


def test_bad_progress_says_what_it_takes_and_submits_nothing(pool: ThrottledProcessPool) -> None:
    submitted = pool.stats()["submitted"]
    with pytest.raises(TypeError, match="progress must be"):
        pool.map(square, range(3), progress="yes")  # type: ignore[call-overload]
    assert pool.stats()["submitted"] == submitted
