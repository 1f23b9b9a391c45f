"""The parent side of ThrottledProcessPool: worker processes, dispatch, results and crashes.

One manager thread per pool waits (``selectors``) on every worker's result pipe, every worker's
process sentinel and a wake-up pipe, writes queued tasks to the workers' task pipes without
ever blocking, and resolves futures. See docs/design.md, "Process pools".
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import selectors
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._exceptions import WorkerCrashedError
from .._kernel._semaphore import ProcessSemaphore
from . import _wire, _worker
from ._futures import TaskFuture
from ._worker import CLAIMED, RING, RING_SIZE, STARTED_NS

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the package imports, the pool cannot run
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("procthrottle")
logger.addHandler(logging.NullHandler())

#: A worker gets about this much work ahead (by the running average of task times)...
AHEAD_SECONDS = 0.005
#: ...at least this many tasks (the one it runs and the next), and at most this many.
MIN_DEPTH, MAX_DEPTH = 2, 256
#: A worker is sent no more while this many pickled bytes of its tasks are unfinished.
MAX_BYTES_AHEAD = 4 << 20
#: An idle worker takes queued tasks from a busy one whose current task has run this long.
STEAL_AFTER = 0.002
#: Workers that die before they are ready this many times in a row break the pool.
MAX_START_FAILURES = 3
PIPE_SIZE = 1 << 20
#: Pickled tasks smaller than this are copied into one buffer per write; larger ones are
#: written from where pickle put them.
SMALL = 1 << 16

QUEUED, SENT, DONE, CANCELLED = range(4)

NO_MAIN_GUARD = (
    "the pool's worker processes could not start: the main module creates a "
    "ThrottledProcessPool when it is imported. Under the 'spawn' and 'forkserver' start "
    "methods every worker imports the main module, so start the pool under "
    "if __name__ == '__main__':"
)


class Task:
    __slots__ = ("args", "fn", "future", "kwargs", "nbytes", "seq", "state", "timeout", "worker")

    def __init__(
        self,
        future: TaskFuture[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs
        self.timeout = timeout
        self.state = QUEUED
        self.seq = 0
        self.nbytes = 0
        self.worker: Worker | None = None


class Worker:
    """The parent's record of one worker process and the tasks it holds."""

    def __init__(self, process: Any, task_conn: Any, result_conn: Any, shared: Any, lock: Any):
        self.process, self.pid = process, process.pid
        self.task_conn, self.result_conn = task_conn, result_conn
        self.task_fd, self.result_fd = task_conn.fileno(), result_conn.fileno()
        self.reader = _wire.FrameReader(self.result_fd)
        self.shared, self.lock = shared, lock
        self.inflight: dict[int, Task] = {}  # seq -> task, in the order sent
        self.out: deque[bytes | bytearray | memoryview] = deque()  # parts not yet written
        self.out_bytes = 0
        self.writing = False  # task_fd is registered for EVENT_WRITE
        self.next_seq = 1
        self.assigned = 0  # tasks sent and not revoked: max_tasks_per_child counts these
        self.bytes_ahead = 0
        self.ready = False
        self.dead = False
        self.init_error: bytes | None = None
        self.timed_out = 0  # seq of the task we killed this worker for

    def claimed(self) -> int:
        return int(self.shared[CLAIMED])


def describe_exit(code: int | None) -> str:
    if code is None:
        return "died of an unknown cause"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} (os._exit, sys.exit or a fatal error)"


# (future, how, what): how is True (a result), False (an exception), or one of these two
# (a result frame, its payload still pickled: unpickled outside the pool's lock).
PICKLED_RESULT, PICKLED_ERROR = 2, 3
Resolution = tuple["Future[Any]", int, Any]
Planned = tuple[Worker, Task, int, tuple[Any, Any, Any]]  # (worker, task, seq, (fn, args, kwargs))


class Engine:
    def __init__(
        self,
        *,
        workers: int,
        semaphore: ProcessSemaphore,
        owns_semaphore: bool,
        section_mode: bool,
        context: Any,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        rate: Any,
    ) -> None:
        self.size = workers
        self.semaphore, self.owns_semaphore = semaphore, owns_semaphore
        self.section_mode = section_mode
        self.context = context
        self.initializer, self.initargs = initializer, initargs
        self.max_tasks = max_tasks
        self.rate = rate
        self.peak = context.Value("i", 0)
        self.lock = threading.RLock()
        self.queue: deque[Task] = deque()
        self.workers: list[Worker] = []
        self.counts = dict.fromkeys(
            (
                "submitted",
                "completed",
                "failed",
                "cancelled",
                "crashed",
                "timed_out",
                "requeued",
                "workers_started",
            ),
            0,
        )
        self.average: float | None = None  # seconds per task, running average
        self.payload_size = 0  # bytes per pickled task, running average
        self.closing = False  # no new tasks: finish the queue, then stop
        self.broken: BrokenProcessPool | None = None
        self.start_failures = 0
        self.sleeping = False
        self.finished = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._run, name="procthrottle-pool", daemon=True)
        try:
            for _ in range(workers):
                self._start_worker()
        except BaseException:
            self._stop_workers(kill=True)
            self._close()
            raise
        self.pid = os.getpid()
        _live.add(self)
        self.thread.start()

    # -- called from user threads -------------------------------------------------------------
    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> TaskFuture[Any]:
        future: TaskFuture[Any] = TaskFuture(self)
        task = Task(future, fn, args, kwargs, timeout)
        future._task = task
        with self.lock:
            if self.broken is not None:
                raise BrokenProcessPool(str(self.broken))
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self.closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.queue.append(task)
            self.counts["submitted"] += 1
            wake, self.sleeping = self.sleeping, False
        if wake:
            self._wake()
        return future

    def cancel_task(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        with self.lock:
            if task.state == QUEUED:
                ok = True
            elif task.state == SENT and task.worker is not None:
                ok = bool(self._revoke(task.worker, [task]))
            else:
                return task.state == CANCELLED and Future.cancel(future)
            if ok:
                task.state = CANCELLED
                task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                self.counts["cancelled"] += 1
        return ok and Future.cancel(future)

    def task_started(self, future: TaskFuture[Any]) -> bool:
        task: Task = future._task
        worker = task.worker
        return task.state == SENT and worker is not None and worker.claimed() >= task.seq

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[Task] = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                while self.queue:
                    task = self.queue.popleft()
                    if task.state == QUEUED:
                        cancelled.append(task)
                for worker in self.workers:
                    cancelled.extend(self._revoke(worker, list(worker.inflight.values())))
                for task in cancelled:
                    task.state = CANCELLED
                    task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                self.counts["cancelled"] += len(cancelled)
        for task in cancelled:
            Future.cancel(task.future)
        self._wake()
        if wait and threading.current_thread() is not self.thread:
            while not self.finished.wait(0.1):  # in slices, so Ctrl-C can interrupt the wait
                pass

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.counts)
            counts["queued"] = sum(task.state == QUEUED for task in self.queue)
            counts["running"] = sum(w.claimed() in w.inflight for w in self.workers)
            counts["sent"] = sum(len(w.inflight) for w in self.workers)
            counts["workers"] = len(self.workers)
        try:
            counts["in_section"] = self.semaphore.limit - self.semaphore.value
        except Exception:  # closed after shutdown
            counts["in_section"] = 0
        counts["max_in_section"] = self.peak.value
        return counts

    def request_stop(self) -> None:
        """The pool object is gone, or the interpreter is exiting: finish the queue, stop."""
        with self.lock:
            self.closing = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"\0")

    # -- workers ------------------------------------------------------------------------------
    def _start_worker(self) -> Worker:
        ctx = self.context
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):  # deeper pipes: fewer wake-ups (Linux)
            with contextlib.suppress(AttributeError, OSError):
                fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        shared = ctx.RawArray("q", RING + RING_SIZE)
        lock = ctx.Lock()
        close_fds: list[int] = []
        if ctx.get_start_method() == "fork":  # the child must not keep other workers' pipes
            close_fds = [self.wake_r, self.wake_w, task_w.fileno(), result_r.fileno()]
            for other in self.workers:
                close_fds += [other.task_fd, other.result_fd]
        boot = _worker.WorkerBoot(
            close_fds=close_fds,
            initargs=self.initargs,
            initializer=self.initializer,
            lock=lock,
            max_tasks=self.max_tasks,
            peak=self.peak,
            rate=self.rate,
            results=result_w,
            section_mode=self.section_mode,
            semaphore=self.semaphore,
            shared=shared,
            tasks=task_r,
        )
        process = ctx.Process(target=_worker.main, args=(boot,), name="procthrottle-worker")
        try:
            process.start()
        finally:
            task_r.close()
            result_w.close()
        os.set_blocking(task_w.fileno(), False)
        os.set_blocking(result_r.fileno(), False)
        worker = Worker(process, task_w, result_r, shared, lock)
        self.workers.append(worker)
        self.selector.register(worker.result_fd, selectors.EVENT_READ, worker)
        self.selector.register(process.sentinel, selectors.EVENT_READ, worker)
        self.counts["workers_started"] += 1
        return worker

    def _revoke(self, worker: Worker, tasks: list[Task]) -> list[Task]:
        """Revoke those of ``tasks`` (sent to ``worker``) that it has not claimed; the revoked
        ones leave its books (caller holds self.lock and sets their new state)."""
        if not tasks:
            return []
        locked = False
        if not worker.dead:
            while not (locked := worker.lock.acquire(timeout=0.05)):
                if not worker.process.is_alive():  # it died holding the lock: claims stopped
                    break
        try:
            claimed = worker.claimed()
            revoked = [task for task in tasks if task.seq > claimed]
            for task in revoked:
                worker.shared[RING + task.seq % RING_SIZE] = task.seq
        finally:
            if locked:
                worker.lock.release()
        for task in revoked:
            del worker.inflight[task.seq]
            worker.bytes_ahead -= task.nbytes
            worker.assigned -= 1
            task.worker = None
        return revoked

    # -- the manager thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug of ours must not leave futures pending forever
            logger.exception("procthrottle pool manager failed; failing the pool's tasks")
            broken = BrokenProcessPool(f"the pool's manager thread failed: {exc!r}")
            broken.__cause__ = exc
            self._break(broken)
        finally:
            self._stop_workers(kill=self.broken is not None)
            self._close()
            self.finished.set()

    def _step(self) -> bool:
        """One turn: plan what to send (locked), pickle and write it (unlocked: submit() and
        cancel() are never held up by pickling or system calls), wait, read, handle."""
        resolutions: list[Resolution] = []
        with self.lock:
            if self.broken is not None:
                return False
            plan: list[Planned] = []
            self._plan(plan)
            retry = self._balance(plan)
        self._send(plan, resolutions)
        with self.lock:
            finish = self.closing and not self.queue and not any(w.inflight for w in self.workers)
            timeout: float | None = 0.0
            if not finish and not self._can_plan():
                timeout = _earliest(retry, self._check_timeouts())
                # From here on, submit() wakes us -- unless every worker has plenty queued:
                # then its next result wakes us soon enough, and submit() saves a wake-up.
                depth = self._depth()
                self.sleeping = any(
                    len(w.inflight) * 2 < depth for w in self.workers if w.ready and not w.dead
                ) or not any(w.ready for w in self.workers)
        for worker in list(self.workers):
            self._flush(worker)
        _resolve(resolutions, self)
        if finish:
            return False
        events = self.selector.select(timeout)
        reads: list[tuple[Worker, list[bytes]]] = []
        exited: list[Worker] = []
        for key, _ in events:
            worker = key.data
            if worker is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            elif key.fd == worker.task_fd:
                self._flush(worker)
            elif key.fd == worker.result_fd:
                reads.append((worker, self._read(worker)))
            elif not worker.dead:
                exited.append(worker)
        with self.lock:
            self.sleeping = False
            for worker, frames in reads:
                self._handle(worker, frames, resolutions)
            for worker in exited:
                self._on_exit(worker, resolutions)
        _resolve(resolutions, self)
        return True

    def _depth(self) -> int:
        if self.average is None:
            return MIN_DEPTH
        return max(MIN_DEPTH, min(MAX_DEPTH, int(AHEAD_SECONDS / max(self.average, 1e-7))))

    def _room(self, worker: Worker, depth: int) -> int:
        if not worker.ready or worker.dead:
            return 0
        if worker.inflight and (
            worker.bytes_ahead >= MAX_BYTES_AHEAD or worker.out_bytes >= MAX_BYTES_AHEAD
        ):
            return 0
        if worker.next_seq - worker.claimed() >= RING_SIZE - 1:
            return 0
        room = depth - len(worker.inflight)
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - worker.assigned)
        return room

    def _plan(self, plan: list[Planned]) -> None:
        """Assign queued tasks to workers, the least loaded first, each up to its depth
        (caller holds the lock; `_send` pickles and writes them)."""
        queue = self.queue
        while queue and queue[0].state != QUEUED:
            queue.popleft()
        if not queue:
            return
        depth = self._depth()
        guess = self.payload_size
        eligible = [w for w in self.workers if self._room(w, depth) > 0]
        while queue and eligible:
            worker = min(eligible, key=lambda w: len(w.inflight))
            share = -(-len(queue) // len(eligible))
            for _ in range(max(1, min(self._room(worker, depth), share))):
                if not queue:
                    break
                task = queue.popleft()
                if task.state != QUEUED:
                    continue
                seq = worker.next_seq
                worker.next_seq += 1
                task.state, task.seq, task.worker, task.nbytes = SENT, seq, worker, guess
                worker.inflight[seq] = task
                worker.bytes_ahead += guess
                worker.assigned += 1
                plan.append((worker, task, seq, (task.fn, task.args, task.kwargs)))
                if worker.bytes_ahead >= MAX_BYTES_AHEAD:
                    break
            if self._room(worker, depth) <= 0:
                eligible.remove(worker)

    def _can_plan(self) -> bool:
        """Is a queued task waiting for a worker with room? (caller holds the lock)"""
        if not any(task.state == QUEUED for task in self.queue):
            return False
        depth = self._depth()
        return any(self._room(w, depth) > 0 for w in self.workers)

    def _send(self, plan: list[Planned], resolutions: list[Resolution]) -> None:
        """Pickle planned tasks without the lock, then queue their frames for the pipes. A
        task cancelled meanwhile was revoked: its frame is simply not sent."""
        if not plan:
            return
        payloads: list[bytes | BaseException | None] = []
        add = payloads.append
        budget: dict[Worker, int] = {}
        sent_any: set[Worker] = set()
        dumps, protocol = pickle.dumps, _wire.PROTOCOL
        for worker, task, _, call in plan:
            ahead = budget.setdefault(worker, worker.bytes_ahead)
            if ahead >= MAX_BYTES_AHEAD and worker in sent_any:
                add(None)  # enough bytes on their way: the rest waits its turn
                continue
            try:
                data = dumps(call, protocol)
            except BaseException as exc:
                _wire.note_unpicklable(exc, call[0])
                add(exc)
            else:
                budget[worker] = ahead + len(data) - task.nbytes
                sent_any.add(worker)
                add(data)
        back: list[Task] = []
        blobs: dict[Worker, bytearray] = {}
        pack_header = _wire.TASK_HEADER.pack
        sizes = [len(p) for p in payloads if isinstance(p, bytes)]
        with self.lock:
            if sizes:
                self.payload_size = (self.payload_size + sum(sizes) // len(sizes)) // 2
            for (worker, task, seq, _), payload in zip(plan, payloads, strict=True):
                if task.state != SENT or task.worker is not worker or task.seq != seq:
                    continue  # revoked (cancelled, or moved) while we pickled
                if payload is None:  # never written: back to the queue, in order
                    del worker.inflight[seq]
                    worker.bytes_ahead -= task.nbytes
                    worker.assigned -= 1
                    task.state, task.worker = QUEUED, None
                    back.append(task)
                    continue
                if isinstance(payload, BaseException):
                    del worker.inflight[seq]
                    worker.bytes_ahead -= task.nbytes
                    worker.assigned -= 1
                    task.state, task.worker = DONE, None
                    task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                    self.counts["failed"] += 1
                    resolutions.append((task.future, False, payload))
                    continue
                size = len(payload)
                worker.bytes_ahead += size - task.nbytes
                task.nbytes = size
                header = pack_header(_wire.TASK.size + size, seq)
                if size < SMALL:
                    blob = blobs.get(worker)
                    if blob is None:
                        blob = blobs[worker] = bytearray()
                        worker.out.append(blob)  # filled below, before anyone writes it
                    blob += header
                    blob += payload
                else:
                    worker.out.append(header)
                    worker.out.append(payload)  # not copied: written from where pickle put it
                    blobs.pop(worker, None)
                worker.out_bytes += len(header) + size
            self.queue.extendleft(reversed(back))
        plan.clear()

    def _balance(self, plan: list[Planned]) -> float | None:
        """Move tasks waiting behind a running one to an idle worker. Returns when to look
        again if a steal was put off."""
        if self.queue:
            return None
        idle = [w for w in self.workers if w.ready and not w.dead and not w.inflight]
        if not idle or (self.max_tasks is not None and all(
            w.assigned >= self.max_tasks for w in idle
        )):
            return None
        retry: float | None = None
        now = time.monotonic_ns()
        for donor in sorted(self.workers, key=lambda w: -len(w.inflight)):
            if not idle or len(donor.inflight) < 2:
                break
            claimed = donor.claimed()
            waiting = [t for t in donor.inflight.values() if t.seq > claimed]
            if not waiting:
                continue
            if claimed in donor.inflight:
                ran = (now - donor.shared[STARTED_NS]) / 1e9
                if ran < STEAL_AFTER:
                    retry = _earliest(retry, STEAL_AFTER - ran)
                    continue
            take = waiting[len(waiting) // 2 :] if claimed in donor.inflight else waiting[1:]
            if not take:
                continue
            stolen = self._revoke(donor, take)
            for task in stolen:
                task.state = QUEUED
            self.queue.extendleft(reversed(stolen))
            self.counts["requeued"] += len(stolen)
            idle.pop()
        if self.queue:
            self._plan(plan)
        return retry

    def _flush(self, worker: Worker) -> None:
        out = worker.out
        while out and not worker.dead:
            parts = list(itertools.islice(out, 512))
            try:
                written = os.writev(worker.task_fd, parts)
            except BlockingIOError:
                break
            except OSError:  # the worker is gone; its sentinel tells the rest
                out.clear()
                worker.out_bytes = 0
                break
            worker.out_bytes -= written
            for part in parts:
                if written >= len(part):
                    written -= len(part)
                    out.popleft()
                else:
                    out[0] = memoryview(part)[written:]
                    break
        want = bool(out) and not worker.dead
        if want != worker.writing:
            if want:
                self.selector.register(worker.task_fd, selectors.EVENT_WRITE, worker)
            else:
                self.selector.unregister(worker.task_fd)
            worker.writing = want

    def _read(self, worker: Worker) -> list[bytes]:
        """What the worker's result pipe holds now (manager thread; no lock needed)."""
        try:
            return worker.reader.read()
        except EOFError:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.result_fd)
            worker.result_fd = -1
            return []

    def _handle(self, worker: Worker, frames: list[bytes], resolutions: list[Resolution]) -> None:
        """Book results (caller holds the lock); their payloads are unpickled later, unlocked."""
        unpack, inflight, append = _wire.RESULT.unpack_from, worker.inflight, resolutions.append
        done = failed = freed = 0
        seconds = 0.0
        for body in frames:
            seq, kind, took = unpack(body)
            if kind >= _wire.READY:
                if kind == _wire.READY:
                    worker.ready = True
                    self.start_failures = 0
                else:  # INIT_FAILED
                    worker.init_error = body[_wire.RESULT.size :]
                continue
            task = inflight.pop(seq, None)
            if task is None:  # pragma: no cover - a result for a task we do not hold
                continue
            freed += task.nbytes
            task.state = DONE
            task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
            seconds += took
            if kind == _wire.OK:
                done += 1
                append((task.future, PICKLED_RESULT, body))
            else:
                failed += 1
                append((task.future, PICKLED_ERROR, body))
        count = done + failed
        if count:
            worker.bytes_ahead -= freed
            self.counts["completed"] += done
            self.counts["failed"] += failed
            mean, average = seconds / count, self.average
            if average is None:
                self.average = mean
            else:  # as if each result moved it by a tenth
                self.average = mean + (average - mean) * 0.9 ** min(count, 50)

    def _check_timeouts(self) -> float | None:
        """Kill workers whose running task is past its timeout; when to look again."""
        soonest: float | None = None
        now = time.monotonic_ns()
        for worker in self.workers:
            if worker.dead or worker.timed_out or not worker.inflight:
                continue
            claimed = worker.claimed()
            task = worker.inflight.get(claimed)
            if task is not None and task.timeout is not None:
                left = task.timeout - (now - worker.shared[STARTED_NS]) / 1e9
                if left <= 0:
                    worker.timed_out = claimed
                    logger.warning(
                        "procthrottle: a task timed out after %g s; killing its worker "
                        "process %d (a new one replaces it)",
                        task.timeout,
                        worker.pid,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
                    continue
                soonest = _earliest(soonest, left)
            elif any(t.timeout is not None for t in worker.inflight.values()):
                soonest = _earliest(soonest, 0.01)  # one may start any moment: poll its start
        return soonest

    def _on_exit(self, worker: Worker, resolutions: list[Resolution]) -> None:
        """A worker exited: finish what it sent, fail what it was running, requeue the rest."""
        if worker.result_fd >= 0:  # what it wrote before it died is still in the pipe
            self._handle(worker, worker.reader.drain(), resolutions)
        worker.process.join(1.0)
        code = worker.process.exitcode
        worker.dead = True
        self._forget(worker)
        claimed = worker.claimed()
        lost: list[Task] = []
        requeue: list[Task] = []
        for seq, task in worker.inflight.items():
            (lost if seq <= claimed else requeue).append(task)
        worker.inflight.clear()
        for task in lost:
            task.state = DONE
            task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
            if task.seq == worker.timed_out:
                exc: BaseException = TimeoutError(
                    f"the task ran longer than its timeout of {task.timeout:g} s; its worker "
                    f"process (pid {worker.pid}) was killed and replaced"
                )
                self.counts["timed_out"] += 1
            else:
                exc = WorkerCrashedError(
                    f"the worker process (pid {worker.pid}) running this task {describe_exit(code)}"
                )
                self.counts["crashed"] += 1
            self.counts["failed"] += 1
            resolutions.append((task.future, False, exc))
        for task in requeue:
            task.state, task.worker = QUEUED, None
        self.queue.extendleft(reversed(requeue))
        self.counts["requeued"] += len(requeue)
        if not worker.ready:
            self._on_start_failure(worker, code)
            return
        if lost and not worker.timed_out:
            logger.warning(
                "procthrottle: worker process %d %s while running a task",
                worker.pid,
                describe_exit(code),
            )
        elif code != 0 and not worker.timed_out:
            logger.warning("procthrottle: worker process %d %s", worker.pid, describe_exit(code))
        if not self.closing or self.queue or any(w.inflight for w in self.workers):
            new = self._start_worker()
            log = logger.debug if code == 0 and not lost else logger.info
            log("procthrottle: started worker process %d to replace %d", new.pid, worker.pid)

    def _on_start_failure(self, worker: Worker, code: int | None) -> None:
        if worker.init_error is not None:
            cause = _wire.decode_error(worker.init_error)
            broken = BrokenProcessPool(
                f"A process in the pool failed to start: its initializer raised "
                f"{type(cause).__name__}: {cause}. The pool is broken."
            )
            broken.__cause__ = cause
        elif code == _worker.EXIT_NO_MAIN_GUARD:
            broken = BrokenProcessPool(NO_MAIN_GUARD)
        else:
            self.start_failures += 1
            if self.start_failures < MAX_START_FAILURES:
                logger.warning(
                    "procthrottle: worker process %d %s before it was ready; starting another",
                    worker.pid,
                    describe_exit(code),
                )
                self._start_worker()
                return
            broken = BrokenProcessPool(
                f"worker processes died {self.start_failures} times in a row before they were "
                f"ready (the last one, pid {worker.pid}, {describe_exit(code)})"
            )
        if self.broken is None:
            logger.error("procthrottle: %s", broken)
        self._break(broken)

    def _break(self, broken: BrokenProcessPool) -> None:
        """Fail every queued and sent task; refuse new ones."""
        failed: list[Resolution] = []
        with self.lock:
            if self.broken is None:
                self.broken = broken
            tasks = [t for t in self.queue if t.state == QUEUED]
            self.queue.clear()
            for worker in self.workers:
                tasks += worker.inflight.values()
                worker.inflight.clear()
            for task in tasks:
                task.state = DONE
                task.fn = task.args = task.kwargs = None  # type: ignore[assignment]
                error = BrokenProcessPool(str(broken))
                error.__cause__ = broken.__cause__
                failed.append((task.future, False, error))
            self.counts["failed"] += len(failed)
        _resolve(failed, self)

    def _forget(self, worker: Worker) -> None:
        for fd in (worker.result_fd, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                if fd >= 0:
                    self.selector.unregister(fd)
        if worker.writing:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(worker.task_fd)
            worker.writing = False
        worker.out.clear()
        worker.out_bytes = 0
        worker.task_conn.close()
        worker.result_conn.close()
        worker.result_fd = -1
        if worker in self.workers:
            self.workers.remove(worker)

    def _stop_workers(self, kill: bool) -> None:
        """Close every task pipe (the workers see EOF and exit), then reap them."""
        with self.lock:
            workers = list(self.workers)
            for worker in workers:
                worker.dead = True
                self._forget(worker)
        for worker in workers:
            if kill:
                worker.process.kill()
            worker.process.join(5.0)
            if worker.process.exitcode is None:  # pragma: no cover - stuck in an initializer
                worker.process.kill()
                worker.process.join(5.0)

    def _close(self) -> None:
        _live.discard(self)
        with contextlib.suppress(OSError):
            self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.owns_semaphore:
            with contextlib.suppress(Exception):
                self.semaphore.close()


_PAYLOAD = _wire.RESULT.size


def _resolve(resolutions: list[Resolution], engine: Engine) -> None:
    """Set each future's outcome (outside the pool's lock: callbacks may submit)."""
    for future, how, value in resolutions:
        ok = how == PICKLED_RESULT or how is True
        if how >= PICKLED_RESULT:  # a result frame, still pickled
            data = memoryview(value)[_PAYLOAD:]
            try:
                value = pickle.loads(data) if ok else _wire.decode_error(bytes(data))
            except BaseException as exc:
                _wire.add_note(
                    exc,
                    "procthrottle: the task's "
                    + ("result" if ok else "exception")
                    + " cannot be unpickled in the parent process",
                )
                if ok:
                    with engine.lock:
                        engine.counts["completed"] -= 1
                        engine.counts["failed"] += 1
                ok, value = False, exc
            del data
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except InvalidStateError:  # cancelled meanwhile (only a revoked task can be)
            pass
    resolutions.clear()


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(0.0, min(a, b))


# -- interpreter exit: pending tasks still run, as ProcessPoolExecutor promises -------------------
_live: weakref.WeakSet[Engine] = weakref.WeakSet()
_exiting = False


def _python_exit() -> None:
    global _exiting
    _exiting = True
    engines = [engine for engine in _live if engine.pid == os.getpid()]  # not a fork's copy
    for engine in engines:
        engine.request_stop()
    for engine in engines:
        engine.thread.join()


_register = getattr(threading, "_register_atexit", None)
if _register is not None:  # pragma: no branch
    _register(_python_exit)

