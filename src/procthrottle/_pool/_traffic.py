"""The engine's traffic: which worker gets which task, writing them, reading results, moving
tasks off a busy worker, timeouts. Runs on the manager thread (``_revoke`` also on callers')."""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import selectors
import signal
import time

from . import _wire
from ._records import (
    AHEAD_SECONDS,
    DONE,
    MAX_BYTES_AHEAD,
    MAX_DEPTH,
    MIN_DEPTH,
    PICKLED_ERROR,
    PICKLED_RESULT,
    QUEUED,
    SENT,
    SMALL,
    STEAL_AFTER,
    EngineState,
    Planned,
    Resolution,
    Task,
    Worker,
    earliest,
    logger,
)
from ._worker import RING, RING_SIZE, STARTED_NS


class Traffic(EngineState):
    def _revoke(self, worker: Worker, tasks: list[Task]) -> list[Task]:
        """Revoke those of ``tasks`` (sent to ``worker``) that it has not claimed; the revoked
        ones leave its books (caller holds self.lock and sets their new state)."""
        if not tasks:
            return []
        with worker.claims_stopped():
            claimed = worker.claimed()
            revoked = [task for task in tasks if task.seq > claimed]
            for task in revoked:
                worker.shared[RING + task.seq % RING_SIZE] = task.seq
        for task in revoked:
            del worker.inflight[task.seq]
            worker.bytes_ahead -= task.nbytes
            worker.assigned -= 1
            task.worker = None
        return revoked

    def _kill_running(self, worker: Worker, seq: int) -> bool:
        """SIGKILL ``worker`` if it still runs task ``seq``. Under its claim lock, so that it
        cannot claim its next task between the look and the kill (that task would die too)."""
        with worker.claims_stopped():
            if worker.claimed() != seq:  # it finished in time after all: nothing to kill
                return False
            worker.timed_out = seq
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
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
        if worker.next_seq - worker.consumed() >= RING_SIZE - 1:
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
            except BaseException as raised:  # even SystemExit from a broken __reduce__
                exc = _wire.pickling_problem(raised)
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
                    retry = earliest(retry, STEAL_AFTER - ran)
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

    def _read(self, worker: Worker) -> list[_wire.Frame]:
        """What the worker's result pipe holds now (manager thread; no lock needed)."""
        try:
            return worker.reader.read()
        except EOFError:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.result_fd)
            worker.result_fd = -1
            return []

    def _handle(
        self, worker: Worker, frames: list[_wire.Frame], resolutions: list[Resolution]
    ) -> None:
        """Book results (caller holds the lock); their payloads are unpickled later, unlocked."""
        unpack, inflight, append = _wire.RESULT.unpack_from, worker.inflight, resolutions.append
        done = failed = freed = 0
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
                    worker.ready = True
                    self.start_failures = 0
                else:  # INIT_FAILED
                    worker.init_error = bytes(body[_wire.RESULT.size :])
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
                    if self._kill_running(worker, claimed):
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
