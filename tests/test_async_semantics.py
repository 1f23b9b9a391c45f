"""AsyncSemaphore: trio checkpoints, guest mode, one shared thread, O(1) cancellation."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import textwrap
import threading
import time
from typing import Any

import anyio
import pytest

from helpers import PYTHON, python_env, unique_name
from procthrottle import AsyncSemaphore, ProcessSemaphore, throttle

trio = pytest.importorskip("trio")


def run_child(script: str, timeout: float = 30) -> str:
    """Run a script in a fresh interpreter; a hang fails fast instead of hanging the suite."""
    done = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)], env=python_env(), capture_output=True,
        text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_uncontended_acquire_is_a_trio_checkpoint() -> None:
    out = run_child(
        """
        import trio
        from procthrottle import AsyncSemaphore
        sem = AsyncSemaphore(1)

        async def main():
            rounds = 0
            with trio.move_on_after(0.1):
                while True:  # never cancelled if acquire were not a checkpoint
                    async with sem:
                        rounds += 1
            print(rounds > 0, sem.value)

        trio.run(main)
        """,
        timeout=20,
    )
    assert out.split() == ["True", "1"]


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_acquire_in_a_cancelled_scope_raises_and_takes_nothing() -> None:
    sem = AsyncSemaphore(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await sem.acquire()
        pytest.fail("acquire in a cancelled scope returned")  # pragma: no cover
    assert scope.cancelled_caught
    assert sem.value == 1
    with anyio.CancelScope() as ascope:  # anyio's scopes too
        ascope.cancel()
        await sem.acquire(timeout=1)
    assert sem.value == 1


def test_trio_guest_mode_on_an_asyncio_host() -> None:
    """sniffio, not a probe for a running asyncio loop, says which loop runs the task."""
    sem = ProcessSemaphore(2)
    asem = AsyncSemaphore(sem)
    current = peak = 0

    async def user() -> None:
        nonlocal current, peak
        async with asem:
            current += 1
            peak = max(peak, current)
            await trio.sleep(0.01)
            current -= 1

    async def trio_main() -> int:
        sem.acquire()  # one permit held here: the others wait through the thread too
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(user)
            await trio.sleep(0.05)
            sem.release()
        return peak

    async def host() -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=done.set_result,
        )
        outcome = await asyncio.wait_for(done, 20)
        return int(outcome.unwrap())

    assert asyncio.run(host()) == 2
    assert sem.value == 2


def test_refuses_async_semaphores_at_construction() -> None:
    for bad in (asyncio.Semaphore(1), trio.Semaphore(1), anyio.Semaphore(1)):
        with pytest.raises(TypeError, match="already async"):
            AsyncSemaphore(bad)  # type: ignore[arg-type]

    class NoTimeout:
        def acquire(self) -> bool:
            return True

        def release(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"acquire\(block, timeout\)"):
        AsyncSemaphore(NoTimeout())  # type: ignore[arg-type]


def _cancel_newest_first(n: int) -> float:
    async def main() -> float:
        sem = AsyncSemaphore(1)
        assert await sem.acquire()
        tasks = [asyncio.create_task(sem.acquire()) for _ in range(n)]
        await asyncio.sleep(0)  # all queue in the gate
        start = time.process_time()  # CPU time: other programs on the host do not count
        for task in reversed(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        took = time.process_time() - start
        sem.release()
        assert sem.value == 1
        assert await sem.acquire(timeout=1)
        sem.release()
        return took

    return asyncio.run(main())


def test_cancelling_waiters_newest_first_is_not_quadratic() -> None:
    small = min(_cancel_newest_first(5_000) for _ in range(3))
    big = min(_cancel_newest_first(20_000) for _ in range(3))
    # linear: 4x; quadratic (deque.remove from the left): 16x
    assert big < 9 * small, (small, big)


def waiter_threads() -> int:
    return sum(t.name == "procthrottle-waiter" for t in threading.enumerate())


def test_fifty_decorations_over_one_semaphore_share_one_thread() -> None:
    sem = ProcessSemaphore(1)
    funcs = []
    for _ in range(50):

        @throttle(sem)
        async def f() -> None:
            await asyncio.sleep(0.001)

        funcs.append(f)
    adapters = [AsyncSemaphore(sem) for _ in range(5)]
    most = 0

    async def take(adapter: AsyncSemaphore) -> None:
        async with adapter:
            await asyncio.sleep(0.001)

    async def main() -> None:
        nonlocal most
        sem.acquire()  # held: every call waits through the kernel
        calls = [asyncio.create_task(f()) for f in funcs]
        calls += [asyncio.create_task(take(a)) for a in adapters]
        for _ in range(20):
            await asyncio.sleep(0.01)
            most = max(most, waiter_threads())
        sem.release()
        await asyncio.wait_for(asyncio.gather(*calls), 20)

    asyncio.run(main())
    assert most == 1
    assert sem.value == 1


def _ping_pong(name: str, me: int, rounds: int, turn: Any, out: Any) -> None:
    """Two processes take turns: each acquires, flips the turn, releases, many times."""

    async def main() -> int:
        asem = AsyncSemaphore(ProcessSemaphore(1, name=name))
        for _ in range(rounds):
            while turn.value != me:
                await asyncio.sleep(0)
            await asem.acquire()
            turn.value = 1 - me
            await asyncio.sleep(0.0005)  # the other one now waits for us, in the kernel
            asem.release()
        return asem._waiter_thread_starts()

    out.put(asyncio.run(main()))


@pytest.mark.timeout(120)
def test_ping_pong_does_not_start_a_thread_per_acquisition() -> None:
    ctx = multiprocessing.get_context("spawn")
    name = unique_name()
    sem = ProcessSemaphore(1, name=name)
    turn, out = ctx.Value("i", 0, lock=False), ctx.Queue()
    procs = [ctx.Process(target=_ping_pong, args=(name, me, 300, turn, out)) for me in (0, 1)]
    for p in procs:
        p.start()
    starts = [out.get(timeout=100) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    sem.unlink()
    assert max(starts) <= 5, starts  # 300 acquisitions each, most through the thread


def _use_after_fork(asem: AsyncSemaphore, out: Any) -> None:
    async def main() -> bool:
        sem = asem.semaphore
        assert isinstance(sem, ProcessSemaphore)
        sem.acquire()  # held: the task must wait through a (new) waiter thread

        async def release_soon() -> None:
            await asyncio.sleep(0.05)
            sem.release()

        helper = asyncio.create_task(release_soon())
        got = await asem.acquire(timeout=5)
        await helper
        asem.release()
        return got

    out.put(asyncio.run(main()))


@pytest.mark.timeout(60)
def test_forked_child_gets_a_fresh_waiter_thread() -> None:
    """The parent's waiter thread (and its lock) do not survive fork: the child starts over."""
    sem = ProcessSemaphore(1)
    asem = AsyncSemaphore(sem)

    async def parent() -> None:  # leave the parent's thread alive, idle, mid-keepalive
        sem.acquire()
        waiting = asyncio.create_task(asem.acquire())
        await asyncio.sleep(0.05)
        sem.release()
        assert await waiting
        asem.release()

    asyncio.run(parent())
    assert waiter_threads() >= 1
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_use_after_fork, args=(asem, out))
    child.start()
    assert out.get(timeout=30) is True
    child.join(10)
    assert child.exitcode == 0


def test_hand_over_never_releases_more_than_was_acquired() -> None:
    """A release hands its permit to the next local task only if an adapter took it: a release
    too many still reaches the kernel, which refuses it."""
    sem = ProcessSemaphore(1)
    asem = AsyncSemaphore(sem)

    async def main() -> None:
        assert await asem.acquire()
        queued = asyncio.create_task(asem.acquire())
        await asyncio.sleep(0.01)
        asem.release()  # handed over: nobody blocks in the kernel
        assert await queued
        assert sem.value == 0
        asem.release()
        with pytest.raises(ValueError, match="limit"):
            asem.release()
        assert sem.value == 1
        sem.acquire()  # taken without the adapter: the adapter may still release it
        asem.release()
        assert sem.value == 1
        assert await asem.acquire(timeout=1)
        asem.release()

    asyncio.run(main())
