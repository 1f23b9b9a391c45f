"""ThrottledProcessPool and ThrottledExecutor with real worker processes."""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import pickle
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

import pool_tasks as tasks
from helpers import max_overlap
from procthrottle import (
    ProcessSemaphore,
    ThrottledExecutor,
    ThrottledProcessPool,
    WorkerCrashedError,
    critical_section,
)

pytestmark = pytest.mark.timeout(90)


def intervals(path: Path, tag: str) -> list[tuple[float, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(float(r[2]), float(r[3])) for r in rows if r[0] == tag]


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "intervals"


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    context: multiprocessing.context.BaseContext = multiprocessing.get_context(str(request.param))
    return context


def test_task_mode_bound_is_exactly_the_limit(
    record: Path, ctx: multiprocessing.context.BaseContext
) -> None:
    with ThrottledProcessPool(4, 2, mp_context=ctx) as pool:
        futures = [pool.submit(tasks.hold, str(record), 0.1, i) for i in range(10)]
        assert [f.result() for f in futures] == list(range(10))
        stats = pool.stats()
    assert max_overlap(intervals(record, "task")) == 2
    assert stats["submitted"] == stats["completed"] == 10
    assert stats["failed"] == stats["running"] == stats["in_section"] == 0
    assert stats["max_in_section"] == 2


def test_section_mode_bounds_sections_not_tasks(
    record: Path, ctx: multiprocessing.context.BaseContext
) -> None:
    with ThrottledProcessPool(4, 2, throttle="section", mp_context=ctx) as pool:
        pids = set(pool.map(tasks.with_section, [str(record)] * 12, [0.05] * 12, [0.05] * 12))
        assert pool.stats()["max_in_section"] == 2
    assert len(pids) >= 3
    assert max_overlap(intervals(record, "section")) == 2
    assert max_overlap(intervals(record, "task")) > 2  # tasks ran freely around the section


def test_two_pools_share_one_semaphore(record: Path) -> None:
    sem = ProcessSemaphore(2)
    with (
        ThrottledProcessPool(3, semaphore=sem) as a,
        ThrottledProcessPool(3, semaphore=sem) as b,
    ):
        futures = [p.submit(tasks.hold, str(record), 0.08) for p in (a, b) for _ in range(6)]
        for f in futures:
            f.result()
    assert max_overlap(intervals(record, "task")) == 2
    assert sem.value == 2
    sem.close()


def test_task_exceptions_propagate_with_remote_traceback() -> None:
    with ThrottledProcessPool(2, 1) as pool:
        future = pool.submit(tasks.fail, "missing")
        with pytest.raises(KeyError, match="missing") as info:
            future.result()
        assert "Traceback" in str(info.value.__cause__)
        assert "pool_tasks.py" in str(info.value.__cause__)
        assert pool.submit(tasks.square, 3).result() == 9
        assert pool.stats()["failed"] == 1
        assert pool.semaphore.value == 1


def test_unpicklable_function_or_argument_fails_only_that_future() -> None:
    with ThrottledProcessPool(2, 2) as pool:
        bad_fn = pool.submit(lambda: 1)
        bad_arg = pool.submit(tasks.square, threading.Lock())  # type: ignore[arg-type]
        good = pool.submit(tasks.square, 4)
        local = (AttributeError, pickle.PicklingError)  # the original pickling errors
        for bad, original in ((bad_fn, local), (bad_arg, TypeError)):
            with pytest.raises(original) as info:
                bad.result(timeout=10)
            if sys.version_info >= (3, 11):  # add_note
                assert "cannot be pickled" in "".join(getattr(info.value, "__notes__", []))
        assert good.result(timeout=30) == 16
        bad_result = pool.submit(tasks.unpicklable_result)
        with pytest.raises(TypeError, match="pickle"):
            bad_result.result(timeout=30)
        assert pool.submit(tasks.square, 5).result(timeout=30) == 25
        assert pool.semaphore.value == 2


@pytest.mark.parametrize(
    ("crash", "args", "match"),
    [
        (tasks.sigkill_self, (), "SIGKILL"),
        (tasks.exit_abruptly, (3,), "exited with code 3"),
        (tasks.segfault, (), "SIGSEGV"),
    ],
    ids=["sigkill", "os_exit", "segfault"],
)
def test_dead_worker_fails_its_task_and_pool_goes_on(
    record: Path, crash: Callable[..., object], args: tuple[object, ...], match: str
) -> None:
    with ThrottledProcessPool(4, 2) as pool:
        before = [pool.submit(tasks.hold, str(record), 0.1, i) for i in range(4)]
        doomed = pool.submit(crash, *args)
        after = [pool.submit(tasks.hold, str(record), 0.1, i) for i in range(4, 8)]
        with pytest.raises(WorkerCrashedError, match=match):
            doomed.result(timeout=60)
        assert [f.result(timeout=60) for f in before + after] == list(range(8))
        assert pool.semaphore.value == 2  # the dead worker's permit came back
        record.write_text("")
        again = [pool.submit(tasks.hold, str(record), 0.1) for _ in range(6)]
        for f in again:
            f.result(timeout=60)
        stats = pool.stats()
    assert max_overlap(intervals(record, "task")) == 2
    assert stats["crashed"] == 1


def test_short_tasks_travel_in_batches_and_fail_alone() -> None:
    with ThrottledProcessPool(2, 2) as pool:
        assert list(pool.map(tasks.square, range(50))) == [i * i for i in range(50)]
        first = [pool.submit(tasks.square, i) for i in range(300)]
        bad_result = pool.submit(tasks.unpicklable_result)
        error = pool.submit(tasks.fail, "in a batch")
        doomed = pool.submit(tasks.sigkill_self)
        last = [pool.submit(tasks.square, i) for i in range(300)]
        assert [f.result(timeout=60) for f in first + last] == [i * i for i in range(300)] * 2
        with pytest.raises(TypeError, match="pickle"):
            bad_result.result(timeout=60)
        with pytest.raises(KeyError, match="in a batch") as info:
            error.result(timeout=60)
        assert "Traceback" in str(info.value.__cause__)
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            doomed.result(timeout=60)
        stats = pool.stats()
        assert stats["crashed"] == 1
        assert stats["failed"] == 3
        assert stats["completed"] == 650
        assert pool.semaphore.value == 2


def test_lazy_map_over_an_infinite_iterator() -> None:
    with ThrottledProcessPool(2, 2) as pool:
        results = pool.map(tasks.square, itertools.count(), buffersize=8)
        first = list(itertools.islice(results, 50))
        assert first == [i * i for i in range(50)]
        assert pool.stats()["submitted"] <= 50 + 8
        results.close()  # type: ignore[attr-defined]


def test_map_chunks_and_timeout(record: Path) -> None:
    with ThrottledProcessPool(2, 2) as pool:
        assert list(pool.map(tasks.square, range(23), chunksize=5)) == [i * i for i in range(23)]
        chunked = pool.map(tasks.square, range(30), chunksize=4, buffersize=8)
        assert list(chunked) == [i * i for i in range(30)]
        slow = pool.map(tasks.hold, [str(record)] * 2, [2.0] * 2, timeout=0.2)
        with pytest.raises(TimeoutError):
            list(slow)


def test_initializer_and_max_tasks_per_child() -> None:
    with ThrottledProcessPool(
        2, 2, initializer=tasks.init, initargs=("ready",), max_tasks_per_child=2
    ) as pool:
        results = [pool.submit(tasks.init_value_and_pid).result() for _ in range(6)]
    assert {value for value, _ in results} == {"ready"}
    assert len({pid for _, pid in results}) >= 3  # workers were replaced after 2 tasks


def test_critical_section_outside_a_pool_task_raises() -> None:
    with pytest.raises(RuntimeError, match="inside a task"), critical_section():
        pass
    with ThrottledProcessPool(1, 1) as pool:  # task mode: the whole task holds the permit
        assert pool.submit(tasks.use_critical_section).result() is True


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": "2"}, TypeError),
        ({"limit": 0}, ValueError),
        ({"limit": True}, TypeError),
        ({"throttle": "all"}, ValueError),
        ({"semaphore": 3}, TypeError),
        ({"initializer": 5}, TypeError),
        ({"initargs": [1]}, TypeError),
        ({"max_tasks_per_child": 0}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type) -> None:
    with pytest.raises(exc):
        ThrottledProcessPool(**kwargs)  # type: ignore[arg-type]


def test_limit_contradicting_semaphore() -> None:
    sem = ProcessSemaphore(3)
    with pytest.raises(ValueError, match="contradicts"):
        ThrottledProcessPool(2, 2, semaphore=sem)
    sem.close()


def test_shutdown_cancel_futures_and_submit_after_shutdown(record: Path) -> None:
    pool = ThrottledProcessPool(2, 1)
    futures = [pool.submit(tasks.hold, str(record), 0.1) for _ in range(6)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futures)
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(tasks.square, 1)


def test_shutdown_without_wait_still_finishes_queued_tasks(record: Path) -> None:
    pool = ThrottledProcessPool(2, 1)
    futures = [pool.submit(tasks.hold, str(record), 0.05, i) for i in range(4)]
    pool.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3]


# -- async ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_and_amap(record: Path) -> None:
    async with ThrottledProcessPool(3, 2) as pool:
        assert await pool.run(tasks.square, 7) == 49
        results = [r async for r in pool.amap(tasks.square, range(40), buffersize=5)]
        assert results == [i * i for i in range(40)]
        held = functools.partial(tasks.hold, str(record), 0.05)
        got = [r async for r in pool.amap(held, range(6), buffersize=3)]
        assert got == list(range(6))
    assert max_overlap(intervals(record, "task")) == 2
    async with ThrottledProcessPool(3, 2) as pool:
        with pytest.raises(KeyError):
            await pool.run(tasks.fail, "x")


@pytest.mark.anyio
async def test_amap_over_a_large_generator_is_lazy() -> None:
    async with ThrottledProcessPool(2, 2) as pool:
        seen = 0
        squares = pool.amap(tasks.square, (i for i in itertools.count()), buffersize=4)
        async with contextlib.aclosing(squares):  # closing early cancels what is pending
            async for value in squares:
                assert value == seen * seen
                seen += 1
                if seen == 30:
                    break
        assert pool.stats()["submitted"] <= 30 + 4


@pytest.mark.anyio
async def test_cancelling_run_leaks_nothing(record: Path) -> None:
    async with ThrottledProcessPool(2, 1) as pool:
        with anyio.move_on_after(0.15):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(pool.run, tasks.hold, str(record), 0.1)
        with anyio.fail_after(30):
            while pool.stats()["running"] or pool.stats()["queued"]:
                await anyio.sleep(0.01)
        stats = pool.stats()
        assert pool.semaphore.value == 1
        assert stats["completed"] < 8  # queued tasks were cancelled, not run
        assert await pool.run(tasks.square, 2) == 4


# -- ThrottledExecutor ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_throttled_executor(kind: str, record: Path) -> None:
    inner = ThreadPoolExecutor(6) if kind == "threads" else ProcessPoolExecutor(4)
    with ThrottledExecutor(inner, 2) as executor:
        futures = [executor.submit(tasks.hold, str(record), 0.08, i) for i in range(8)]
        assert [f.result(timeout=30) for f in futures] == list(range(8))
        with pytest.raises(KeyError):
            executor.submit(tasks.fail, "boom").result(timeout=30)
        assert list(executor.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]
        assert isinstance(executor.semaphore, ProcessSemaphore)
        assert executor.semaphore.value == 2
    assert max_overlap(intervals(record, "task")) == 2


def test_throttled_executor_bad_arguments() -> None:
    with pytest.raises(TypeError):
        ThrottledExecutor(object(), 2)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as inner, pytest.raises(TypeError):
        ThrottledExecutor(inner, "2")  # type: ignore[arg-type]
