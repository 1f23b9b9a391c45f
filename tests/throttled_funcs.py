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
