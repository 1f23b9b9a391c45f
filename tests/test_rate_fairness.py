"""RateLimiter shares between processes: equal demand, equal shares, whatever the waiters are.

Every process runs the same number of waiters (threads, asyncio tasks or trio tasks) that
acquire as fast as they are let in, for several seconds; the admissions each process got in
the seconds when all of them were running are counted. A waiter keeps its place in the shared
order as a blocked thread does, so the shares follow the number of waiters, not their kind.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

import test_rate_tasks as tasks
from procthrottle import RateLimiter

MIXES = {
    "asyncio vs asyncio": ["asyncio", "asyncio"],
    "asyncio vs threads": ["asyncio", "threads"],
    "trio x4": ["trio", "trio", "trio", "trio"],
    "threads, asyncio, trio": ["threads", "asyncio", "trio"],
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mix", list(MIXES))
def test_equal_demand_gets_equal_shares(mix: str, tmp_path: Path) -> None:
    kinds = MIXES[mix]
    rate, waiters, seconds = 100.0, 20, 5.0
    limiter = RateLimiter(rate)
    path = tmp_path / "admissions"
    context = multiprocessing.get_context("spawn")
    # Everyone starts at the same instant once every child has imported what it needs.
    start = (context.Barrier(len(kinds) + 1), context.Event(), context.Value("d", 0.0))
    children = [
        context.Process(
            target=tasks.fair_worker, args=(limiter, kind, waiters, str(path), start, seconds)
        )
        for kind in kinds
    ]
    for child in children:
        child.start()
    t0 = end = 0.0
    try:
        start[0].wait(timeout=60)
        t0 = time.monotonic() + 0.2
        end = t0 + seconds
        start[2].value = t0
        start[1].set()
        for child in children:
            child.join(60)
            assert child.exitcode == 0, (child.exitcode, kinds)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        limiter.close()
    # The seconds when all were running: after every child's first admission, before the end.
    rows = [line.split() for line in path.read_text().splitlines()]
    assert len(rows) == len(kinds)
    times = {row[0]: [float(t) for t in row[1:]] for row in rows}
    lo = max(t0, *(stamps[0] for stamps in times.values())) + 0.5
    hi = end - 0.5
    shares = [sum(lo <= t < hi for t in stamps) for stamps in times.values()]
    total = sum(shares)
    assert total >= 0.9 * rate * (hi - lo), (shares, hi - lo)  # the rate was used
    equal = total / len(kinds)
    # Before the fix: asyncio vs threads about 1:20, asyncio vs asyncio about 1:5.
    assert all(abs(share - equal) <= 0.15 * equal for share in shares), list(
        zip(kinds, shares, strict=True)
    )
