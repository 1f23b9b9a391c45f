"""`@throttle` across processes: the bound travels with the function under every start method.

The functions live in tests/throttled_funcs.py (module level, so they pickle by name); each call
holds its permit 0.1 s and records its interval, and the test measures how many overlapped.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import throttled_funcs
from helpers import PYTHON, max_overlap, python_env, read_intervals
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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize(
    "which", ["explicit_semaphore", "explicit_async_semaphore", "explicit_rate"]
)
def test_an_explicit_anonymous_bound_made_at_import_is_refused_too(
    method: str, which: str, tmp_path: Path
) -> None:
    """`@throttle(ProcessSemaphore(1))`, `@throttle(AsyncSemaphore(1))` and
    `@throttle(rate=RateLimiter(...))` made by the worker's own import are as much its own as
    `@throttle(1)`'s: refused, not run with a bound of the worker's own."""
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        future = pool.submit(throttled_funcs.call_explicit_by_name, which,
                             str(tmp_path / "intervals"))
        with pytest.raises(ProcThrottleError, match="name=") as raised:
            future.result(timeout=60)
    assert which in str(raised.value)
    assert not (tmp_path / "intervals").exists()  # the body never ran


@pytest.mark.timeout(120)
@pytest.mark.parametrize("forward", ["forward_to_a_pool", "forward_to_a_fork"])
def test_a_process_never_given_the_bound_does_not_pass_its_own_on(
    forward: str, tmp_path: Path
) -> None:
    """A spawned child that only imported the module neither sends its own semaphore on to
    its pool (pickling refuses) nor lets a child it forks use it."""
    record = tmp_path / "intervals"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(getattr(throttled_funcs, forward), str(record))
        if forward == "forward_to_a_pool":
            with pytest.raises(ProcThrottleError, match="name="):
                future.result(timeout=90)
        else:
            assert future.result(timeout=90) == 1  # the grandchild raised, exit code 1
    assert not record.exists()  # the body never ran


PRELOADED = """\
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import throttled_funcs
from procthrottle import ProcThrottleError

if __name__ == "__main__":
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["throttled_funcs"])  # the server imports it, not the parent
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        try:
            pool.submit(throttled_funcs.call_by_name, sys.argv[1]).result(timeout=60)
        except ProcThrottleError as exc:
            print("refused", exc)
    throttled_funcs.unlink_names()
"""


@pytest.mark.timeout(120)
def test_a_forkserver_worker_refuses_the_servers_own_semaphore(tmp_path: Path) -> None:
    """The module preloaded by the forkserver: its workers inherit the *server's* semaphore by
    fork, not the parent's."""
    script = tmp_path / "preloaded.py"
    script.write_text(PRELOADED)
    env = python_env()
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).parent)
    env.pop("PT_TEST_THROTTLE_NAME", None)  # names of its own, removed by the script
    out = subprocess.run([PYTHON, str(script), str(tmp_path / "intervals")], env=env,
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused throttled_funcs.one_at_a_time is @throttle(1)")
    assert "forkserver" in out.stdout
    assert not (tmp_path / "intervals").exists()


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


def test_callable_objects_have_a_repr_and_refuse_to_pickle_with_a_reason() -> None:
    class Fetch:
        async def __call__(self) -> None: ...

    fetch = throttle(1)(Fetch())
    assert repr(fetch).endswith("Fetch object>")
    assert repr(throttled_funcs.one_at_a_time) == (
        "<throttled function throttled_funcs.one_at_a_time>"
    )
    with pytest.raises(pickle.PicklingError, match="module-level function"):
        pickle.dumps(fetch)


def test_a_function_the_receiver_cannot_find_is_a_clear_error() -> None:
    data = pickle.dumps(throttled_funcs.one_at_a_time).replace(
        b"one_at_a_time", b"not_in_module"
    )
    with pytest.raises(pickle.UnpicklingError, match="importable module"):
        pickle.loads(data)
