"""Module-level throttled functions: they must pickle into process pools.

The semaphore's name is chosen by the first process that imports this module and passed to
spawned children through the environment, so they all share one host-wide limit.
"""

from __future__ import annotations

import os
import time
import uuid

from procthrottle import ProcessSemaphore, throttle

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
