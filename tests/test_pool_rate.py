"""`rate=` on the pools: tasks (or their critical sections) start at the rate, across processes."""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import pool_tasks as tasks
from helpers import read_intervals
from procthrottle import RateLimiter, ThrottledExecutor, ThrottledProcessPool


def starts(path: Path, tag: str) -> list[float]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return sorted(float(row[2]) for row in rows if row[0] == tag)


def min_gap(stamps: list[float]) -> float:
    return min(b - a for a, b in itertools.pairwise(stamps))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["task", "section"])
def test_pool_tasks_or_sections_start_at_the_rate(tmp_path: Path, mode: str) -> None:
    log = tmp_path / "log"
    with ThrottledProcessPool(3, 3, throttle=mode, rate="10/s") as pool:  # type: ignore[arg-type]
        if mode == "task":
            list(pool.map(tasks.hold, [str(log)] * 8, [0.0] * 8))
        else:
            list(pool.map(tasks.with_section, [str(log)] * 8, [0.0] * 8, [0.0] * 8))
    stamps = starts(log, "task" if mode == "task" else "section")
    assert len(stamps) == 8
    # burst 1 at 10/s: slots 100 ms apart. A start is recorded when its worker wakes, and a
    # loaded machine wakes some late: half an interval is the margin for that
    assert min_gap(stamps) >= 0.05, stamps
    assert stamps[-1] - stamps[0] >= 7 * 0.1 - 0.05, stamps
    assert len(read_intervals(log)) == (8 if mode == "task" else 16)


@pytest.mark.timeout(60)
def test_executor_rate_reaches_spawned_workers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    limiter = RateLimiter("10/s")  # anonymous: pickled by identity into spawned workers
    spawn = multiprocessing.get_context("spawn")
    try:
        with ThrottledExecutor(ProcessPoolExecutor(3, mp_context=spawn), 3, rate=limiter) as ex:
            list(ex.map(tasks.hold, [str(log)] * 6, [0.0] * 6))
    finally:
        limiter.close()
    stamps = starts(log, "task")
    assert len(stamps) == 6
    assert min_gap(stamps) >= 0.05, stamps  # slots 100 ms apart; half of it for late wake-ups
    assert stamps[-1] - stamps[0] >= 5 * 0.1 - 0.05, stamps
