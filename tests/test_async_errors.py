"""AsyncSemaphore when things fail: errors reach the waiting tasks, closed loops jam nothing."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from helpers import PYTHON, python_env, unique_name
from procthrottle import AsyncSemaphore, ProcessSemaphore, SemaphoreClosedError

pytestmark = pytest.mark.anyio


def hold(name: str, seconds: float) -> subprocess.Popen[str]:
    """An unrelated process holding the one permit of a named semaphore for a while."""
    return hold_any(name, seconds, True)


def hold_any(name: str, seconds: float, crash_safe: bool) -> subprocess.Popen[str]:
    """`hold`, with either kernel."""
    script = textwrap.dedent(
        f"""
        import time
        from procthrottle import ProcessSemaphore
        sem = ProcessSemaphore(1, name={name!r}, crash_safe={crash_safe})
        assert sem.acquire(timeout=10)
        print("held", flush=True)
        time.sleep({seconds})
        sem.release()
        """
    )
    child = subprocess.Popen(
        [PYTHON, "-c", script], env=python_env(), stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    return child


def reap(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(10)
    assert child.stdout is not None
    child.stdout.close()


def waiter_threads() -> int:
    return sum(t.name == "procthrottle-waiter" for t in threading.enumerate())


async def test_unlink_while_tasks_wait_reaches_every_task() -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name)
    asem = AsyncSemaphore(sem)
    child = hold(name, 30)
    errors: list[BaseException] = []

    async def user() -> None:
        try:
            await asem.acquire()
        except SemaphoreClosedError as exc:
            errors.append(exc)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(user)
                await anyio.sleep(0.3)  # one waits in the kernel, four in the gate
                assert asem._debug_state()["queue"] == 1
                sem.unlink()
    finally:
        reap(child)
    assert len(errors) == 5
    # a fresh semaphore works in this process, and the waiter thread carried on or left
    fresh = AsyncSemaphore(1)
    assert await fresh.acquire(timeout=1)
    fresh.release()


@pytest.mark.parametrize("crash_safe", [True, False])
@pytest.mark.parametrize("how", ["close", "unlink"])
async def test_tasks_waiting_for_a_permit_held_here_hear_of_close_and_unlink(
    crash_safe: bool, how: str
) -> None:
    """The permit is held by a task of this process and the others wait at the gate: the
    holder's release fails on the closed (or unlinked: both kernels) semaphore, and the gate's
    waiters must hear of it too, not wait forever for the slot."""
    name = unique_name()
    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe)
    asem = AsyncSemaphore(sem)
    outcomes: list[object] = []

    async def user() -> None:
        try:
            outcomes.append(await asem.acquire())
        except SemaphoreClosedError as exc:
            outcomes.append(exc)
        else:
            asem.release()

    assert await asem.acquire()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(user)
                await anyio.sleep(0.1)
                assert asem._debug_state()["gate"] == 3
                if how == "close":
                    sem.close()
                else:
                    ProcessSemaphore.open(name, crash_safe=crash_safe).unlink()
                with pytest.raises(SemaphoreClosedError):
                    asem.release()
    finally:
        if how == "close":
            ProcessSemaphore.open(name, crash_safe=crash_safe).unlink()
    assert len(outcomes) == 3
    assert all(isinstance(o, SemaphoreClosedError) for o in outcomes), outcomes


@pytest.mark.parametrize("crash_safe", [True, False])
async def test_close_reaches_tasks_waiting_in_the_kernel_at_once(crash_safe: bool) -> None:
    """Another process holds the permit for a while: closing the semaphore here must not leave
    the task waiting until that process releases. (The waiter thread stays in the kernel until
    the permit comes, gives it straight back, and leaves.)"""
    name = unique_name()
    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe)
    asem = AsyncSemaphore(sem)
    threads_before = waiter_threads()
    child = hold_any(name, 3, crash_safe)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                outcome: list[BaseException] = []

                async def user() -> None:
                    try:
                        await asem.acquire()
                    except SemaphoreClosedError as exc:
                        outcome.append(exc)

                tg.start_soon(user)
                await anyio.sleep(0.2)
                assert asem._debug_state()["queue"] == 1
                closed_at = time.monotonic()
                sem.close()
        assert len(outcome) == 1
        assert time.monotonic() - closed_at < 2
        assert child.wait(30) == 0  # it released: the waiter thread got the permit ...
        with anyio.fail_after(10):
            while waiter_threads() > threads_before:  # ... gave it back, and left
                await anyio.sleep(0.05)
        reopened = ProcessSemaphore.open(name, crash_safe=crash_safe)
        assert reopened.value == 1
        reopened.unlink()
        reopened.close()
    finally:
        reap(child)


@pytest.fixture
def no_threads() -> Iterator[dict[str, int]]:
    """Make starting a waiter thread fail, as under a pids limit, while ``state["fail"]``."""
    state = {"fail": 1, "calls": 0}
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "procthrottle-waiter" and state["fail"]:
            state["calls"] += 1
            raise RuntimeError("can't start new thread")
        original(self)

    threading.Thread.start = start  # type: ignore[method-assign]
    try:
        yield state
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]


async def test_thread_start_failure_reaches_the_task_and_recovers(
    no_threads: dict[str, int],
) -> None:
    sem = ProcessSemaphore(1)
    asem = AsyncSemaphore(sem)
    sem.acquire()  # held: an acquire must wait in the kernel, through the thread
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="can't start new thread"):
        await asem.acquire()
    assert no_threads["calls"] == 1
    no_threads["fail"] = 0  # the cause is gone
    async with anyio.create_task_group() as tg:
        tg.start_soon(_release_soon, sem)
        assert await asem.acquire(timeout=5)  # the slot was returned; the thread starts now
    asem.release()
    assert sem.value == 1


async def _release_soon(sem: Any) -> None:
    await anyio.sleep(0.1)
    sem.release()


class FlakySemaphore:
    """A real threading.Semaphore with a backend's transient errors: its non-blocking acquire
    fails ``failures`` more times, its blocking acquire fails while ``blocking_fails``."""

    def __init__(self, limit: int, failures: int = 0) -> None:
        self.limit = limit
        self.failures = failures
        self.blocking_fails = False
        self.sem = threading.Semaphore(limit)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if block and self.blocking_fails:
            raise ConnectionError("backend unavailable while waiting")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend unavailable")
        return self.sem.acquire(block, timeout)

    def release(self) -> None:
        self.sem.release()


async def test_fast_path_error_returns_the_gate_slot() -> None:
    flaky = FlakySemaphore(2, failures=5)
    asem = AsyncSemaphore(flaky)
    for _ in range(5):  # more errors than the gate has slots
        with pytest.raises(ConnectionError):
            await asem.acquire()
    with anyio.fail_after(5):
        assert await asem.acquire()
        assert await asem.acquire()
    asem.release()
    asem.release()


async def test_waiter_thread_error_reaches_the_tasks_and_recovers() -> None:
    flaky = FlakySemaphore(2)
    asem = AsyncSemaphore(flaky)
    flaky.sem.acquire()
    flaky.sem.acquire()  # held outside the adapter: tasks must wait through the thread
    flaky.blocking_fails = True
    errors: list[BaseException] = []

    async def user() -> None:
        try:
            await asem.acquire()
        except ConnectionError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(user)
    assert len(errors) == 2
    assert errors[0] is not errors[1]  # each task raises its own copy
    flaky.blocking_fails = False  # the cause is gone: it works again
    async with anyio.create_task_group() as tg:
        tg.start_soon(_release_soon, flaky.sem)
        with anyio.fail_after(5):
            assert await asem.acquire()
    asem.release()
    flaky.sem.release()
    assert flaky.sem.acquire(False)
    assert flaky.sem.acquire(False)


def test_waiters_of_a_closed_loop_are_skipped() -> None:
    asem = AsyncSemaphore(1)
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[bool]] = []

    async def hold_and_queue() -> None:
        assert await asem.acquire()
        for _ in range(3000):
            tasks.append(loop.create_task(asem.acquire()))
        await asyncio.sleep(0.05)  # they all queue in the gate

    loop.run_until_complete(hold_and_queue())
    loop.close()  # with 3,000 tasks still waiting
    asem.release()  # no "Event loop is closed", no RecursionError
    assert asem.value == 1
    assert asyncio.run(asem.acquire(timeout=5))
    asem.release()
    tasks.clear()  # their coroutines close now: they must not pass on a grant again
    assert asyncio.run(asem.acquire(timeout=5))
    assert not asyncio.run(asem.acquire(timeout=0))
    asem.release()
    assert asem.value == 1


@pytest.mark.timeout(60)
def test_kernel_waiters_of_a_closed_loop_are_skipped() -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name)
    asem = AsyncSemaphore(sem)
    child = hold(name, 0.5)
    loop = asyncio.new_event_loop()
    tasks = []

    async def queue() -> None:
        tasks.append(loop.create_task(asem.acquire()))
        await asyncio.sleep(0.1)  # it waits in the kernel, through the thread

    loop.run_until_complete(queue())
    loop.close()
    child.wait(10)  # its release goes to our thread, whose task's loop is closed
    assert asyncio.run(asem.acquire(timeout=5))
    asem.release()
    reap(child)
    deadline = 5.0
    while sem.value != 1 and deadline > 0:  # pragma: no cover - normally at once
        threading.Event().wait(0.01)
        deadline -= 0.01
    assert sem.value == 1
    sem.unlink()


def _child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(script)], env=python_env(), stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)
def test_sigkill_after_the_thread_granted_a_permit_returns_it() -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name)
    sem.acquire()
    child = _child(
        f"""
        import asyncio, time
        from procthrottle import AsyncSemaphore, ProcessSemaphore
        async def main():
            asem = AsyncSemaphore(ProcessSemaphore(1, name={name!r}))
            print("waiting", flush=True)
            assert await asem.acquire(timeout=20)  # through the waiter thread
            print("got", flush=True)
            time.sleep(30)
        asyncio.run(main())
        """
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    time.sleep(0.3)  # it waits in the kernel now
    sem.release()
    assert child.stdout.readline() == "got\n"
    assert sem.value == 0
    child.kill()
    child.wait(10)
    child.stdout.close()
    assert sem.value == 1  # the kernel returned the dead process's permit
    sem.unlink()


@pytest.mark.timeout(60)
def test_a_waiter_thread_blocked_in_the_kernel_never_keeps_the_process_alive() -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name)
    sem.acquire()
    child = _child(
        f"""
        import asyncio
        from procthrottle import AsyncSemaphore, ProcessSemaphore
        async def main():
            asem = AsyncSemaphore(ProcessSemaphore(1, name={name!r}))
            # times out; the thread stays blocked in the kernel, keeping its place
            assert not await asem.acquire(timeout=0.3)
        asyncio.run(main())
        print("done", flush=True)
        """
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "done\n"
    start = time.monotonic()
    assert child.wait(10) == 0
    assert time.monotonic() - start < 5
    child.stdout.close()
    sem.release()
    assert sem.value == 1  # the exited process took no permit with it
    sem.unlink()


def test_adapters_made_and_dropped_leave_one_close_listener() -> None:
    """A program may wrap a semaphore anew per request: its close() listeners must not grow."""
    import gc

    from procthrottle._kernel import _semaphore

    sem = ProcessSemaphore(1)
    for _ in range(50):
        AsyncSemaphore(sem)
        gc.collect()
    assert len(_semaphore._close_listeners[sem]) == 1
    sem.close()
    assert sem not in _semaphore._close_listeners


async def test_a_threading_lock_works_as_a_semaphore_of_one() -> None:
    """`Lock.acquire` takes (blocking, timeout) but refuses ``timeout=None``: the waiter thread
    blocks with ``acquire(True)`` alone, so tasks queued behind the lock get it in turn."""
    lock = threading.Lock()
    asem = AsyncSemaphore(lock)  # type: ignore[arg-type]  # its timeout cannot be None
    inside: list[int] = []
    peak = 0

    async def user(i: int) -> None:
        nonlocal peak
        async with asem:
            inside.append(i)
            peak = max(peak, len(inside))
            await anyio.sleep(0.01)
            inside.remove(i)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(user, i)
    assert peak == 1
    assert not lock.locked()


@pytest.mark.parametrize("crash_safe", [True, False])
async def test_one_waiter_thread_per_kernel_semaphore_however_many_handles(
    crash_safe: bool,
) -> None:
    """30 decorations, each over its own handle of one name: the tasks that wait in the kernel
    share one waiter thread (they wait for the same kernel semaphore), and each gets a turn."""
    from procthrottle import throttle

    name = unique_name()
    handles = [ProcessSemaphore(1, name=name, crash_safe=crash_safe) for _ in range(30)]
    calls: list[int] = []

    def decorated(i: int) -> Any:
        @throttle(handles[i])
        async def work() -> None:
            calls.append(i)

        return work

    functions = [decorated(i) for i in range(30)]
    threads_before = waiter_threads()
    child = hold_any(name, 1.5, crash_safe)  # every task must wait in the kernel
    peak = 0
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for work in functions:
                    tg.start_soon(work)
                while len(calls) < 30:
                    peak = max(peak, waiter_threads() - threads_before)
                    await anyio.sleep(0.02)
        assert sorted(calls) == list(range(30))
        assert peak == 1
        assert handles[0].value == 1
    finally:
        reap(child)
        handles[0].unlink()
        for handle in handles:
            handle.close()
