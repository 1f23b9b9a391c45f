"""Dispatch: the task queue, each worker's books of sequence numbers, and the pipes' traffic.

`Traffic` is the one owner of which task each worker holds. Every sequence number is given
out by `_book` and taken back by `_unbook`, nowhere else; a booked task leaves a worker's books
in exactly one of these ways, so "every seq sent is eventually claimed or reclaimed" holds:

- its result arrives (`on_results`: it was claimed and ran);
- it is revoked before the worker claims it (`revoke`: a cancel, or a move to an idle worker);
  the worker then skips it and says so before it idles (a SKIPPED frame), which frees its
  slot of the revoked ring (`Worker.consumed`);
- its frame was never written (`_send`: pickling failed, or the byte budget was spent);
- its worker died (`reclaim`: claimed ones are lost, the others go back to the queue);
- the pool broke (`take_all`).

Runs on the manager thread, under the pool's lock for the books (``cancel`` also on callers').
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _wire
from ._records import (
    AHEAD_SECONDS,
    MAX_BYTES_AHEAD,
    MAX_DEPTH,
    MIN_DEPTH,
    QUEUED,
    SENT,
    STEAL_AFTER,
    Planned,
    Task,
    Worker,
    earliest,
    logger,
)
from ._worker import RING, RING_SIZE, STARTED_NS

if TYPE_CHECKING:
    from ._engine import Engine


class Traffic:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.outcomes = engine.outcomes
        self.max_tasks = engine.max_tasks
        self.queue: deque[Task] = deque()
        self.average: float | None = None  # seconds per task, running average
        self.payload_size = 0  # bytes per pickled task, running average

    # -- the queue (caller holds the lock) -------------------------------------------------------
    def queued(self) -> int:
        return sum(task.state == QUEUED for task in self.queue)

    def cancel(self, task: Task) -> bool:
        """Take back a task that has not started: True if it will never run."""
        if task.state == QUEUED:
            return True
        if task.state == SENT and task.worker is not None:
            return bool(self.revoke(task.worker, [task]))
        return False

    def cancel_all(self) -> list[Task]:
        """Take back every task that has not started (``shutdown(cancel_futures=True)``)."""
        tasks = [task for task in self.queue if task.state == QUEUED]
        self.queue.clear()
        for worker in self.engine.workers:
            tasks += self.revoke(worker, list(worker.inflight.values()))
        return tasks

    def idle(self) -> bool:
        """Nothing queued, nothing sent: the pool may stop once closing."""
        return not self.queue and not any(w.inflight for w in self.engine.workers)

    def take_all(self) -> list[Task]:
        """Every task queued or sent (the pool broke): off the books, to be failed."""
        tasks = [t for t in self.queue if t.state == QUEUED]
        self.queue.clear()
        for worker in self.engine.workers:
            tasks += worker.inflight.values()
            worker.inflight.clear()
        return tasks

    # -- the books: the one place seqs are given out and taken back -------------------------------
    def _book(self, worker: Worker, task: Task, nbytes: int) -> int:
        seq = worker.next_seq
        worker.next_seq += 1
        task.state, task.seq, task.worker, task.nbytes = SENT, seq, worker, nbytes
        worker.inflight[seq] = task
        worker.bytes_ahead += nbytes
        worker.assigned += 1
        return seq

    def _unbook(self, worker: Worker, task: Task, requeue: bool) -> None:
        """The task leaves ``worker``'s books unclaimed (its frame unsent, or revoked)."""
        del worker.inflight[task.seq]
        worker.bytes_ahead -= task.nbytes
        worker.assigned -= 1
        task.worker = None
        if requeue:
            task.state = QUEUED

    def revoke(self, worker: Worker, tasks: list[Task]) -> list[Task]:
        """Revoke those of ``tasks`` (sent to ``worker``) that it has not claimed; the revoked
        ones leave its books (the caller sets their new state)."""
        if not tasks:
            return []
        with worker.claims_stopped():
            claimed = worker.claimed()
            revoked = [task for task in tasks if task.seq > claimed]
            for task in revoked:
                worker.shared[RING + task.seq % RING_SIZE] = task.seq
        for task in revoked:
            self._unbook(worker, task, requeue=False)
        return revoked

    def reclaim(self, worker: Worker) -> list[Task]:
        """``worker`` died: its unclaimed tasks go back to the head of the queue (they never
        started); the claimed ones, without a result, are returned: they are lost."""
        claimed = worker.claimed()
        lost: list[Task] = []
        requeue: list[Task] = []
        for seq, task in worker.inflight.items():
            (lost if seq <= claimed else requeue).append(task)
        worker.inflight.clear()
        for task in requeue:
            task.state, task.worker = QUEUED, None
        self.queue.extendleft(reversed(requeue))
        self.outcomes.count("requeued", len(requeue))
        return lost

    def kill_running(self, worker: Worker, seq: int) -> bool:
        """SIGKILL ``worker`` if it still runs task ``seq``. Under its claim lock, so that it
        cannot claim its next task between the look and the kill (that task would die too)."""
        with worker.claims_stopped():
            if worker.claimed() != seq:  # it finished in time after all: nothing to kill
                return False
            worker.timed_out = seq
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            return True

    # -- planning: which worker gets which task (caller holds the lock) ---------------------------
    def depth(self) -> int:
        if self.average is None:
            return MIN_DEPTH
        return max(MIN_DEPTH, min(MAX_DEPTH, int(AHEAD_SECONDS / max(self.average, 1e-7))))

    def _room(self, worker: Worker, depth: int) -> int:
        if not worker.ready or worker.dead:
            return 0
        if worker.inflight and (
            worker.bytes_ahead >= MAX_BYTES_AHEAD or worker.outbox.unwritten >= MAX_BYTES_AHEAD
        ):
            return 0
        if worker.next_seq - worker.consumed() >= RING_SIZE - 1:
            return 0
        room = depth - len(worker.inflight)
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - worker.assigned)
        return room

    def _unwritten(self) -> int:
        """Pickled bytes the parent holds until the pipes took them (a large pickle counts
        whole until its last byte is written)."""
        return sum(w.outbox.memory() for w in self.engine.workers)

    def plan(self, plan: list[Planned]) -> None:
        """Assign queued tasks to workers, the least loaded first, each up to its depth
        (`send` pickles and writes them). Nothing while the pipes have not taken the bytes
        already pickled (a large argument): pickles wait their turn rather than pile up."""
        queue = self.queue
        while queue and queue[0].state != QUEUED:
            queue.popleft()
        if not queue or self._unwritten() >= MAX_BYTES_AHEAD:
            return
        depth = self.depth()
        guess = self.payload_size
        eligible = [w for w in self.engine.workers if self._room(w, depth) > 0]
        while queue and eligible:
            worker = min(eligible, key=lambda w: len(w.inflight))
            share = -(-len(queue) // len(eligible))
            for _ in range(max(1, min(self._room(worker, depth), share))):
                if not queue:
                    break
                task = queue.popleft()
                if task.state != QUEUED:
                    continue
                seq = self._book(worker, task, guess)
                plan.append((worker, task, seq, (task.fn, task.args, task.kwargs)))
                if worker.bytes_ahead >= MAX_BYTES_AHEAD:
                    break
            if self._room(worker, depth) <= 0:
                eligible.remove(worker)

    def can_plan(self) -> bool:
        """Is a queued task waiting for a worker with room?"""
        if not any(task.state == QUEUED for task in self.queue):
            return False
        if self._unwritten() >= MAX_BYTES_AHEAD:  # the pipes' write events wake us
            return False
        depth = self.depth()
        return any(self._room(w, depth) > 0 for w in self.engine.workers)

    def result_due(self) -> bool:
        """Will a result wake the manager soon enough to send more? (Then submit() need not
        wake it.) True when every ready worker holds plenty of tasks."""
        workers = [w for w in self.engine.workers if w.ready and not w.dead]
        depth = self.depth()
        return bool(workers) and all(len(w.inflight) * 2 >= depth for w in workers)

    def balance(self, plan: list[Planned]) -> float | None:
        """Move tasks waiting behind a running one to an idle worker. Returns when to look
        again if a steal was put off."""
        if self.queue:
            return None
        workers = self.engine.workers
        idle = [w for w in workers if w.ready and not w.dead and not w.inflight]
        if not idle or (
            self.max_tasks is not None and all(w.assigned >= self.max_tasks for w in idle)
        ):
            return None
        retry: float | None = None
        now = time.monotonic_ns()
        for donor in sorted(workers, key=lambda w: -len(w.inflight)):
            if not idle or len(donor.inflight) < 2:
                break
            claimed = donor.claimed()
            waiting = [t for t in donor.inflight.values() if t.seq > claimed]
            if not waiting:
                continue
            if claimed in donor.inflight:
                ran = (now - donor.shared[STARTED_NS]) / 1e9
                if ran < STEAL_AFTER:
                    retry = earliest(retry, STEAL_AFTER - ran)
                    continue
            take = waiting[len(waiting) // 2 :] if claimed in donor.inflight else waiting[1:]
            if not take:
                continue
            stolen = self.revoke(donor, take)
            for task in stolen:
                task.state = QUEUED
            self.queue.extendleft(reversed(stolen))
            self.outcomes.count("requeued", len(stolen))
            idle.pop()
        if self.queue:
            self.plan(plan)
        return retry

    # -- writing (manager thread) -----------------------------------------------------------------
    def send(self, plan: list[Planned]) -> None:
        """Pickle planned tasks without the lock, then queue their frames for the pipes. A
        task cancelled meanwhile was revoked: its frame is simply not sent."""
        if not plan:
            return
        payloads: list[bytes | BaseException | None] = []
        add = payloads.append
        budget: dict[Worker, int] = {}
        sent_any: set[Worker] = set()
        dumps, protocol = pickle.dumps, _wire.PROTOCOL
        # At most about MAX_BYTES_AHEAD of pickles not yet taken by the pipes, all workers
        # together (but always one): eight 100 MB arguments are pickled one after another, as
        # the pipes take them, not one per worker at once (twice the memory, no faster).
        unwritten = self._unwritten()
        for worker, task, _, call in plan:
            ahead = budget.setdefault(worker, worker.bytes_ahead)
            if (ahead >= MAX_BYTES_AHEAD and worker in sent_any) or (
                unwritten >= MAX_BYTES_AHEAD and sent_any
            ):
                add(None)  # enough bytes on their way: the rest waits its turn
                continue
            try:
                data = dumps(call, protocol)
            except BaseException as raised:  # even SystemExit from a broken __reduce__
                exc = _wire.pickling_problem(raised)
                _wire.note_unpicklable(exc, call[0])
                add(exc)
            else:
                budget[worker] = ahead + len(data) - task.nbytes
                unwritten += len(data)
                sent_any.add(worker)
                add(data)
            del call
        back: list[Task] = []
        pack_header = _wire.TASK_HEADER.pack
        sizes = [len(p) for p in payloads if isinstance(p, bytes)]
        with self.engine.lock:
            if sizes:
                self.payload_size = (self.payload_size + sum(sizes) // len(sizes)) // 2
            for (worker, task, seq, _), payload in zip(plan, payloads, strict=True):
                if task.state != SENT or task.worker is not worker or task.seq != seq:
                    continue  # revoked (cancelled, or moved) while we pickled
                if payload is None:  # never written: back to the queue, in order
                    self._unbook(worker, task, requeue=True)
                    back.append(task)
                    continue
                if isinstance(payload, BaseException):
                    self._unbook(worker, task, requeue=False)
                    self.outcomes.fail(task, payload)
                    continue
                size = len(payload)
                worker.bytes_ahead += size - task.nbytes
                task.nbytes = size
                worker.outbox.add(pack_header(_wire.TASK.size + size, seq), payload)
            for worker in budget:
                worker.outbox.end_batch()
            self.queue.extendleft(reversed(back))
        plan.clear()
        payloads.clear()

    def flush(self, worker: Worker) -> None:
        if not worker.dead:
            worker.outbox.flush(self.engine.selector, worker)

    # -- reading ----------------------------------------------------------------------------------
    def read(self, worker: Worker) -> list[_wire.Frame]:
        """What the worker's result pipe holds now (manager thread; no lock needed)."""
        try:
            return worker.reader.read()
        except EOFError:
            with contextlib.suppress(KeyError, ValueError):
                self.engine.selector.unregister(worker.result_fd)
            worker.result_fd = -1
            return []

    def on_results(self, worker: Worker, frames: Iterable[_wire.Frame]) -> None:
        """Book the frames a worker sent (caller holds the lock); their payloads are unpickled
        later, unlocked, by `Outcomes.deliver`."""
        unpack, inflight = _wire.RESULT.unpack_from, worker.inflight
        done: list[tuple[Task, bool, _wire.Frame]] = []
        freed = 0
        seconds = 0.0
        for body in frames:
            if len(body) < _wire.RESULT.size:  # out of step: trust nothing more from it
                logger.error(
                    "procthrottle: worker process %d sent a malformed result frame (%d bytes); "
                    "killing it (a new one replaces it; please report this as a bug)",
                    worker.pid,
                    len(body),
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                break
            seq, kind, took = unpack(body)
            if kind >= _wire.READY:
                if kind == _wire.SKIPPED:
                    worker.skipped = max(worker.skipped, seq)
                elif kind == _wire.READY:
                    self.engine.workers.started(worker)
                else:  # INIT_FAILED, OPEN_FAILED
                    worker.init_error = bytes(body[_wire.RESULT.size :])
                    worker.init_kind = kind
                continue
            task = inflight.pop(seq, None)
            if task is None:  # pragma: no cover - a result for a task we do not hold
                continue
            freed += task.nbytes
            seconds += took
            done.append((task, kind == _wire.OK, body))
        if done:
            count = len(done)
            self.outcomes.results(done)
            worker.bytes_ahead -= freed
            mean, average = seconds / count, self.average
            if average is None:
                self.average = mean
            else:  # as if each result moved it by a tenth
                self.average = mean + (average - mean) * 0.9 ** min(count, 50)

    # -- timeouts ---------------------------------------------------------------------------------
    def check_timeouts(self) -> float | None:
        """Kill workers whose running task is past its timeout; when to look again."""
        soonest: float | None = None
        now = time.monotonic_ns()
        for worker in self.engine.workers:
            if worker.dead or worker.timed_out or not worker.inflight:
                continue
            claimed = worker.claimed()
            task = worker.inflight.get(claimed)
            if task is not None and task.timeout is not None:
                left = task.timeout - (now - worker.shared[STARTED_NS]) / 1e9
                if left <= 0:
                    if self.kill_running(worker, claimed):
                        logger.warning(
                            "procthrottle: a task timed out after %g s; killed its worker "
                            "process %d (a new one replaces it)",
                            task.timeout,
                            worker.pid,
                        )
                    continue
                soonest = earliest(soonest, left)
            elif any(t.timeout is not None for t in worker.inflight.values()):
                soonest = earliest(soonest, 0.01)  # one may start any moment: poll its start
        return soonest
