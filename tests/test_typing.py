"""Type checkers see through submit/run/schedule/map/amap: mypy flags a wrong argument, as it
does for ``ProcessPoolExecutor.submit`` (typeshed types it with ``ParamSpec``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import python_env

pytest.importorskip("mypy")

CHECKED = '''\
from concurrent.futures import Future, ThreadPoolExecutor

from procthrottle import ThrottledExecutor, ThrottledProcessPool


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def sync(pool: ThrottledProcessPool, executor: ThrottledExecutor) -> None:
    pool.submit(square, "x")  # E: arg-type
    pool.submit(square, x="x")  # E: arg-type
    pool.submit(square, 1, 2)  # E: call-arg
    good: Future[int] = pool.submit(square, 1)
    wrong: Future[str] = pool.submit(square, 1)  # E: arg-type
    executor.submit(square, "x")  # E: arg-type
    done: Future[int] = executor.submit(square, 1)
    pool.schedule(square, ("x",))  # E: arg-type
    pool.schedule(square, (1,))
    pool.schedule(square, [1], timeout=1.0)
    pool.schedule(square, (), {"x": 1})
    for r in pool.map(square, ["x"]):  # E: arg-type
        pass
    total: int = sum(pool.map(square, [1, 2]))
    sums: list[int] = list(pool.map(add, [1], [2]))
    names: list[str] = list(pool.map(square, [1]))  # E: arg-type
    pool.map(square, [1], progress={"desc": "squares"})
    ThreadPoolExecutor().submit(square, "x")  # E: arg-type


async def run(pool: ThrottledProcessPool) -> None:
    await pool.run(square, "x")  # E: arg-type
    value: int = await pool.run(square, 1)
    async for item in pool.amap(square, ["x"]):  # E: arg-type
        pass
    async for number in pool.amap(square, range(3)):
        print(number + 1)
'''


@pytest.mark.timeout(300)
def test_mypy_flags_wrong_arguments_of_submit_and_map(tmp_path: Path) -> None:
    checked = tmp_path / "checked.py"
    checked.write_text(CHECKED)
    expected = {
        (number, match[1])
        for number, line in enumerate(CHECKED.splitlines(), 1)
        if (match := re.search(r"# E: ([\w-]+)", line))
    }
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--cache-dir", str(tmp_path / "cache"), str(checked)],
        env=python_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )
    found = {
        (int(match[1]), match[2])
        for match in re.finditer(r"checked\.py:(\d+): error: .*\[([\w-]+)\]$", out.stdout, re.M)
    }
    assert found == expected, out.stdout + out.stderr
