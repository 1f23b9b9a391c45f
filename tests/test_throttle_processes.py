"""`@throttle` across processes: the bound travels with the function under every start method.

The functions live in tests/throttled_funcs.py (module level, so they pickle by name); each call
holds its permit 0.1 s and records its interval, and the test measures how many overlapped.
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import throttled_funcs
from helpers import max_overlap, read_intervals
from procthrottle import ProcThrottleError, ThrottledProcessPool, throttle

METHODS = ["fork", "spawn", "forkserver"]


def _run_in_pool(method: str, fn: Any, path: Path, calls: int = 8) -> set[int]:
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        return set(pool.map(fn, [str(path)] * calls))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_anonymous_limit_holds_in_a_process_pool(method: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    pids = _run_in_pool(method, throttled_funcs.one_at_a_time, record)
    assert len(pids) >= 2  # the calls really ran in several worker processes
    assert max_overlap(read_intervals(record)) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_named_limit_holds_in_a_process_pool(method: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    pids = _run_in_pool(method, throttled_funcs.one_host_wide, record)
    assert len(pids) >= 2
    assert max_overlap(read_intervals(record)) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_the_limit_holds_in_processes_given_it_as_target(method: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    context: Any = multiprocessing.get_context(method)
    procs = [context.Process(target=throttled_funcs.one_at_a_time, args=(str(record),))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert max_overlap(read_intervals(record)) == 1


@pytest.mark.timeout(120)
def test_throttled_pool_workers_share_the_limit(tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    context = multiprocessing.get_context("spawn")
    with ThrottledProcessPool(4, limit=4, mp_context=context) as pool:
        pids = set(pool.map(throttled_funcs.one_at_a_time, [str(record)] * 8))
    assert len(pids) >= 2
    assert max_overlap(read_intervals(record)) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_that_only_imported_the_function_refuses_to_call_it(
    method: str, tmp_path: Path
) -> None:
    """Its module made a semaphore of its own there: never an unbounded call in silence."""
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        future = pool.submit(throttled_funcs.call_by_name, str(tmp_path / "intervals"))
        with pytest.raises(ProcThrottleError, match="name=") as raised:
            future.result(timeout=60)
    assert "one_at_a_time" in str(raised.value)
    assert not (tmp_path / "intervals").exists()  # the body never ran


@pytest.mark.timeout(60)
def test_a_forked_worker_inherits_the_limit_when_it_only_imported_the_function(
    tmp_path: Path,
) -> None:
    record = tmp_path / "intervals"
    pids = _run_in_pool("fork", throttled_funcs.call_by_name, record)
    assert len(pids) >= 2
    assert max_overlap(read_intervals(record)) == 1


def test_local_functions_refuse_to_pickle_with_a_reason() -> None:
    @throttle(1)
    def local() -> None: ...

    with pytest.raises(pickle.PicklingError, match="module level"):
        pickle.dumps(local)


def test_name_needs_an_int_limit() -> None:
    with pytest.raises(TypeError, match="name="):
        throttle(rate="10/s", name="api")
