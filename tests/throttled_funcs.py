"""Module-level throttled functions: they must pickle into process pools.

The semaphore's name is chosen by the first process that imports this module and passed to
spawned children through the environment, so they all share one host-wide limit.
"""

from __future__ import annotations

import os
import time
import uuid

from procthrottle import AsyncSemaphore, ProcessSemaphore, RateLimiter, throttle

NAME = os.environ.setdefault("PT_TEST_THROTTLE_NAME", f"pt-test-throttle-{uuid.uuid4().hex}")
SEMAPHORE = ProcessSemaphore(2, name=NAME)


@throttle(SEMAPHORE)
def bounded(path: str) -> int:
    """Hold the permit for 0.1 s and record when."""
    start = time.monotonic()
    time.sleep(0.1)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {start} {time.monotonic()}\n")
    return os.getpid()


@throttle(SEMAPHORE)
async def bounded_async(x: int) -> int:
    """The async shape: awaits its permit; pickles by reference like `bounded`."""
    return x


@throttle(1)
def one_at_a_time(path: str) -> int:
    """An anonymous limit of 1: hold it 0.1 s and record when, from whichever process."""
    return _record(path)


@throttle(1, name=f"{NAME}-by-name")
def one_host_wide(path: str) -> int:
    """The host-wide form: every process that imports this module shares the name."""
    return _record(path)


def call_by_name(path: str) -> int:
    """Reaches `one_at_a_time` by importing it, not by receiving it."""
    return one_at_a_time(path)


#: Bounds made explicitly at import: anonymous objects of this process, as `@throttle(1)` makes.
EXPLICIT = ProcessSemaphore(1)


@throttle(EXPLICIT)
def explicit_semaphore(path: str) -> int:
    """A module-level anonymous ProcessSemaphore passed to throttle."""
    return _record(path)


@throttle(AsyncSemaphore(1))
async def explicit_async_semaphore(path: str) -> int:
    """A module-level AsyncSemaphore passed to throttle."""
    return _record(path)


@throttle(rate=RateLimiter("20/s"))
def explicit_rate(path: str) -> int:
    """A module-level anonymous RateLimiter passed to throttle."""
    return _record(path)


def call_explicit_by_name(which: str, path: str) -> int:
    """Reaches one of the explicit-bound functions by importing it, not by receiving it."""
    fn = globals()[which]
    if which == "explicit_async_semaphore":
        import asyncio

        return int(asyncio.run(fn(path)))
    return int(fn(path))


def forward_to_a_pool(path: str) -> int:
    """In a process that only imported this module: send `one_at_a_time` on to a pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(one_at_a_time, path).result(timeout=60)


def forward_to_a_fork(path: str) -> int:
    """In a process that only imported this module: call `one_at_a_time` in a forked child."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=one_at_a_time, args=(path,))
    child.start()
    child.join(60)
    return int(child.exitcode or 0)


def _record(path: str) -> int:
    start = time.monotonic()
    time.sleep(0.1)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {start} {time.monotonic()}\n")
    return os.getpid()


def unlink_names() -> None:
    """Remove this module's host-wide names (the suite's conftest does, after the session)."""
    SEMAPHORE.unlink()
    ProcessSemaphore.open(f"{NAME}-by-name").unlink()
