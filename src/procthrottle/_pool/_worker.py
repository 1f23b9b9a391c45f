"""What runs inside a ThrottledProcessPool worker: its main loop and critical_section().

Each worker has its own pair of pipes (tasks in, results out) and a small shared array: the
parent always knows which task a worker holds. A worker *claims* a task before running it, under
a per-worker lock, by writing its sequence number to the array; the parent *revokes* a task that
is not claimed yet (to cancel it, or to move it to an idle worker) by marking its number in the
same array under the same lock. So every task is either claimed (it ran, or was running when the
worker died: it is never run again) or was never started (it may safely go elsewhere).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

from .._exceptions import SemaphoreClosedError
from .._kernel._semaphore import ProcessSemaphore
from . import _wire

#: Shared array layout: [claimed seq, claim time (monotonic ns), peak holders seen, revoked
#: ring...]. One per worker, written without a lock (each word has one writer, or the claim
#: lock): a worker killed at any instant leaves nothing locked that others wait for.
CLAIMED, STARTED_NS, PEAK, RING = 0, 1, 2, 3
#: Slots in the revoked ring; the parent keeps every worker's unclaimed seqs within this span.
RING_SIZE = 1024
#: How often (seconds) a task waiting for its turn under `rate=` looks whether it was cancelled.
REVOKE_POLL = 0.05
#: Exit code of a spawned worker whose parent created the pool while importing the main module.
EXIT_NO_MAIN_GUARD = 87
#: Exit code of a worker that received a malformed task frame (its task stream is out of step).
EXIT_BAD_FRAME = 86


class WorkerBoot:
    """Everything a worker process needs, passed as its ``Process`` argument."""

    __slots__ = (
        "close_fds",
        "failed",
        "initargs",
        "initializer",
        "lock",
        "max_tasks",
        "rate",
        "results",
        "section_mode",
        "semaphore",
        "shared",
        "tasks",
    )
    close_fds: list[int]
    failed: BaseException | None  # the semaphore or rate limiter could not be opened here
    initargs: tuple[Any, ...]
    initializer: Callable[..., object] | None
    lock: Any
    max_tasks: int | None
    rate: Any
    results: Any  # multiprocessing Connection, write end
    section_mode: bool
    semaphore: ProcessSemaphore
    shared: Any  # RawArray("q"): CLAIMED, STARTED_NS, PEAK, revoked ring
    tasks: Any  # multiprocessing Connection, read end

    def __init__(self, **fields: Any) -> None:
        self.failed = None
        for key, value in fields.items():
            setattr(self, key, value)

    def __getstate__(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self.__slots__}
        # The semaphore and the rate limiter travel as a pickle of their own, opened in
        # __setstate__: one that cannot be opened any more (unlinked, removed from the host) is
        # then reported by the worker as the pool's cause (OPEN_FAILED), instead of a bootstrap
        # traceback and a worker that dies before it is ready, again and again.
        state["shared_objects"] = pickle.dumps(
            (state.pop("semaphore"), state.pop("rate")), _wire.PROTOCOL
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.pop("shared_objects")
        for key, value in state.items():
            setattr(self, key, value)
        try:
            self.semaphore, self.rate = pickle.loads(blob)
        except Exception as exc:
            self.semaphore = self.rate = None  # type: ignore[assignment]
            self.failed = exc


class WorkerState:
    """This worker's view of its pool, for critical_section()."""

    __slots__ = ("rate", "section_mode", "semaphore", "shared")

    def __init__(
        self, semaphore: ProcessSemaphore, shared: Any, section_mode: bool, rate: Any
    ) -> None:
        self.semaphore, self.shared, self.section_mode, self.rate = (
            semaphore,
            shared,
            section_mode,
            rate,
        )

    def enter(self) -> None:
        """Wait for the rate gate (if any), take a permit, and record the peak seen."""
        self.gate()
        self.take()

    def gate(self, revoked: Callable[[], bool] | None = None) -> bool:
        """Wait until the rate allows one more task (or section).

        The one place a pool task waits for `rate=`: before the task in task mode, at
        critical_section() entry in section mode. With ``revoked`` (task mode: the task may
        still be cancelled), the wait stops as soon as it returns True, and the turn is given
        back when nobody reserved one after it: False, the task must not run.
        """
        rate = self.rate
        if rate is None:
            return True
        reserve = getattr(rate, "_reserve", None)  # RateLimiter, RedisRateLimiter
        if revoked is None or reserve is None:
            rate.acquire()
            return True
        reservation = reserve(1, None)
        slot = reservation[0]
        while (delay := slot - time.monotonic_ns()) > 0:
            if revoked():
                rate._give_back(reservation)
                return False
            time.sleep(min(delay / 1e9, REVOKE_POLL))
        return True

    def take(self) -> None:
        """Take a permit and record the peak number of holders seen (by this worker)."""
        sem, shared = self.semaphore, self.shared
        sem.acquire()
        limit = sem.limit
        if shared[PEAK] < limit:  # once the peak is the limit, it can't grow: skip the read
            held = limit - sem.value
            if held > shared[PEAK]:
                shared[PEAK] = held


_state: WorkerState | None = None
_in_task = False


def call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task that runs ``fn`` over a chunk of argument tuples (``map(chunksize=...)``)."""
    return [fn(*args) for args in chunk]


def call_chunk_single(fn: Callable[..., Any], chunk: list[Any]) -> list[Any]:
    """One task that runs ``fn`` over a chunk of single arguments (``map`` of one iterable)."""
    return [fn(arg) for arg in chunk]


def main(boot: WorkerBoot) -> None:
    """A worker's life: initializer, then tasks until STOP, EOF, or ``max_tasks``."""
    try:
        with suppress(BrokenPipeError):  # the pool is gone or broken: nobody wants results
            _serve(boot)
    except _wire.BadFrame as exc:  # nothing after it can be trusted: leave, and say why
        print(exc, file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_FRAME)


def _serve(boot: WorkerBoot) -> None:
    global _state, _in_task
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for fd in boot.close_fds:  # fork: the other workers' task pipes, so they see EOF
        with suppress(OSError):
            os.close(fd)
    out = boot.results.fileno()
    reader = _wire.FrameReader(boot.tasks.fileno())
    if boot.failed is not None:
        _wire.write_all(
            out, _wire.result_frame(0, _wire.OPEN_FAILED, 0.0, _wire.encode_error(boot.failed))
        )
        return
    state = _state = WorkerState(boot.semaphore, boot.shared, boot.section_mode, boot.rate)
    try:
        if boot.initializer is not None:
            boot.initializer(*boot.initargs)
    except BaseException as exc:
        _wire.write_all(out, _wire.result_frame(0, _wire.INIT_FAILED, 0.0, _wire.encode_error(exc)))
        return
    _wire.write_all(out, _wire.result_frame(0, _wire.READY, 0.0, b""))
    shared, lock = boot.shared, boot.lock
    task_mode = not boot.section_mode
    keep = boot.rate is None  # keep the permit across queued tasks (not while waiting for rate)
    left = boot.max_tasks
    queue: deque[_wire.Frame] = deque()
    holding = False  # task mode: the permit is kept from one task to the next while more wait
    # The last seq skipped (revoked) and the last one the parent heard of as skipped: revoked
    # seqs hold slots of the parent's ring span until it learns they are past (see SKIPPED).
    skipped = told = 0
    try:
        while left is None or left > 0:
            if not queue:
                if holding:
                    holding = _release(state)
                if skipped > told and skipped > shared[CLAIMED]:  # tell before going idle
                    _wire.write_all(out, _wire.result_frame(skipped, _wire.SKIPPED, 0.0, b""))
                    told = skipped
                try:
                    queue.extend(reader.read())
                except EOFError:
                    return
                continue
            body = queue.popleft()
            seq = _wire.task_seq(body)
            if seq == _wire.STOP:
                return
            if shared[RING + seq % RING_SIZE] == seq:  # revoked already: skip the gates
                skipped = seq
                continue
            gate_error: BaseException | None = None
            if task_mode:
                try:
                    if not state.gate(partial(_seq_revoked, shared, seq)):
                        skipped = seq
                        continue  # cancelled while it waited for its turn under `rate=`
                    if not holding:
                        state.take()
                        holding = True
                except Exception as exc:  # the semaphore (or rate) stopped working: unlinked,
                    # closed by an exit hook, a backend down. Not a crash to retry elsewhere:
                    # this task fails with the cause (below), and the worker lives on.
                    gate_error = exc
            with lock:  # claim it, unless the parent revoked it first
                revoked = shared[RING + seq % RING_SIZE] == seq
                if not revoked:
                    shared[STARTED_NS] = time.monotonic_ns()
                    shared[CLAIMED] = seq
            if revoked:
                skipped = seq
                continue
            if gate_error is not None:
                _wire.add_note(
                    gate_error,
                    "procthrottle: the pool's worker could not take its permit (or rate turn) "
                    "for this task, so the task did not run",
                )
                _wire.write_result(out, seq, _wire.ERROR, 0.0, _wire.encode_error(gate_error))
                del gate_error
                if left is not None:
                    left -= 1
                continue
            start = time.perf_counter()
            _in_task = True
            try:
                fn, args, kwargs = pickle.loads(memoryview(body)[_wire.TASK.size :])
                del body
                kind, payload = _wire.dumps_result(fn(*args, **kwargs))
            except BaseException as exc:  # the task's own error, whatever it is
                kind, payload = _wire.ERROR, _wire.encode_error(exc)
            finally:
                _in_task = False
            fn = args = kwargs = None
            seconds = time.perf_counter() - start
            while queue and _revoked(shared, queue[0]):  # so that they keep no permit
                skipped = _wire.task_seq(queue.popleft())
            if holding and (not queue or not keep):  # release before the parent hears
                holding = _release(state)
            _wire.write_result(out, seq, kind, seconds, payload)
            del payload
            if left is not None:
                left -= 1
    finally:
        if holding:
            _release(state)


def _release(state: WorkerState) -> bool:
    """Give the permit back; a semaphore that was unlinked or closed meanwhile has no permit to
    take back (the next take() fails that task with the cause). Returns False: not holding."""
    with suppress(SemaphoreClosedError):
        state.semaphore.release()
    return False


def _revoked(shared: Any, body: _wire.Frame) -> bool:
    seq = _wire.task_seq(body)
    return seq != _wire.STOP and _seq_revoked(shared, seq)


def _seq_revoked(shared: Any, seq: int) -> bool:
    return bool(shared[RING + seq % RING_SIZE] == seq)


def refuse_import_time_pool() -> None:
    """In a spawned worker importing the main module: leave quietly with a telling exit code.

    The pool reports it once ("start the pool under if __name__ == '__main__':") instead of
    every worker printing a traceback.
    """
    sys.exit(EXIT_NO_MAIN_GUARD)


@contextmanager
def critical_section() -> Iterator[None]:
    """Hold one permit of the pool's semaphore for the ``with`` block.

    Usable only inside a task of a `ThrottledProcessPool`. With ``throttle="section"`` at most
    ``limit`` tasks are inside it at once; with ``throttle="task"`` the whole task already holds
    a permit, so it does nothing.

    Raises:
        RuntimeError: when not called from inside a pool task.
    """
    state = _state
    if state is None or not _in_task:
        raise RuntimeError(
            "critical_section() is only usable inside a task running on a ThrottledProcessPool"
        )
    if not state.section_mode:
        yield
        return
    state.enter()
    try:
        yield
    finally:
        state.semaphore.release()
