"""`rate=` on the pools: tasks (or their critical sections) start at the rate, across processes."""

from __future__ import annotations

import itertools
import multiprocessing
import time
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


@pytest.mark.timeout(60)
def test_cancelled_task_waiting_for_its_turn_gives_the_turn_back(tmp_path: Path) -> None:
    """A task sent to a worker may wait there for its turn under `rate=`; cancelled meanwhile,
    it gives the turn back at once, and shutdown(cancel_futures=True) does not wait for it."""
    log = tmp_path / "log"
    pool = ThrottledProcessPool(1, 1, rate="1/2s")  # burst 1: one start per 2 s
    try:
        pool.submit(tasks.hold, str(log), 0.0).result(timeout=30)  # the turn at t = 0
        waiting = pool.submit(tasks.hold, str(log), 0.0)  # its turn: t = 2 s
        time.sleep(0.3)
        assert waiting.cancel()
        pool.submit(tasks.hold, str(log), 0.0).result(timeout=30)  # gets the turn at t = 2 s
        stamps = starts(log, "task")
        assert len(stamps) == 2
        assert 2.0 - 0.05 <= stamps[1] - stamps[0] < 3.0, stamps  # not 4 s: the turn came back
        late = [pool.submit(tasks.hold, str(log), 0.0) for _ in range(3)]  # turns at 4, 6, 8 s
        time.sleep(0.3)
        begin = time.monotonic()
        pool.shutdown(wait=True, cancel_futures=True)
        assert time.monotonic() - begin < 2.0
        assert all(f.cancelled() for f in late)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    assert len(starts(log, "task")) == 2
