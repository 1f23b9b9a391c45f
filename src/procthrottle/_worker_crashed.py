"""`WorkerCrashedError`, apart from the other exceptions: it derives from `BrokenProcessPool`,
and `concurrent.futures.process` (multiprocessing's pipes and queues) is a cost that only the
pools should pay, not ``import procthrottle``."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from ._exceptions import ProcThrottleError


class WorkerCrashedError(ProcThrottleError, BrokenProcessPool):
    """A task's worker process died while running it (signal or abrupt exit).

    The message names the signal (e.g. ``SIGKILL``) or exit code and the worker's pid. It also
    derives from `concurrent.futures.process.BrokenProcessPool`, whose stdlib meaning is "a
    worker process terminated abruptly", so ``except BrokenProcessPool`` clauses written for
    `ProcessPoolExecutor` keep catching it. Only the task whose worker died fails with it: the
    pool replaces the worker and goes on.
    """
