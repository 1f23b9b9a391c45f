"""How the waiters of one `RedisSemaphore` handle in one process learn that their turn came.

Each waiter (a thread, or an async task) has a token in the semaphore's queue in Redis. A
release grants the permit to the first live waiter on the server and pushes its token to its
process's wake list; one *listener* thread per handle and process blocks on that list with
``BLPOP`` and wakes the waiter whose token came. So waiting costs no polling: the server does
O(1) work per release, plus one heartbeat per process every `HEARTBEAT` seconds (which also
tells the server that this process's waiters are alive, and hands on the permits of holders
whose lease ran out).

Work that must not hold up a caller -- giving up the place of a waiter that timed out or was
cancelled, the releases of async tasks -- goes to one *worker* thread, which retries while
Redis does not answer: a timed-out acquire leaves nothing behind once the server answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import redis

from ._redis_link import CallTimedOut, RedisUnavailableError

log = logging.getLogger("procthrottle.redis")

#: Seconds between two heartbeats of a waiting process (and the longest BLPOP).
HEARTBEAT = 1.0
#: Milliseconds a waiting process counts as alive after its last heartbeat.
ALIVE_MS = 6_000
#: Seconds the listener and worker threads stay up, idle, before they exit.
KEEPALIVE = 2.0
#: How long the worker keeps retrying a job while Redis does not answer (seconds).
GIVE_UP = 120.0

WAITING, GRANTED, GONE, FAILED = 0, 1, 2, 3


class Waiter(Protocol):
    state: int
    error: BaseException | None

    def wake(self) -> bool: ...


class ThreadWaiter:
    """A thread blocked in `RedisSemaphore.acquire`."""

    __slots__ = ("error", "event", "state")

    def __init__(self) -> None:
        self.state = WAITING
        self.error: BaseException | None = None
        self.event = threading.Event()

    def wake(self) -> bool:
        self.event.set()
        return True


class Calls(Protocol):
    """What the waiting machinery asks of its semaphore."""

    def _heartbeat(self, client: str, tokens: list[str], keep: bool) -> None: ...
    def _pop_granted(self, key: str, seconds: float) -> list[str]: ...
    def _cancel(self, token: str, keep: bool, timeout: float | None) -> int: ...
    def _release_tokens(self, tokens: list[str], timeout: float | None) -> int: ...
    def _confirm(self, tokens: list[str]) -> None: ...


class Waiting:
    """The waiters of one handle in one process, its listener thread and its worker thread."""

    def __init__(self, calls: Calls, client: str, wake_key: str, describe: str) -> None:
        self.calls = calls
        self.client = client
        self.wake_key = wake_key
        self.describe = describe
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.waiters: dict[str, Waiter] = {}
        #: Tokens the server said it queued: only those are queued again by a heartbeat that
        #: finds this process taken for dead (an acquire still on its way queues itself).
        self.queued: set[str] = set()
        self.listener: threading.Thread | None = None
        self.worker: threading.Thread | None = None
        self.jobs: deque[tuple[float, Callable[[], None]]] = deque()
        self.running = 0  # jobs being done now
        self.closed = False

    # -- waiters --------------------------------------------------------------------------
    def register(self, token: str, waiter: Waiter) -> None:
        """Expect a grant for ``token`` (before the acquire that queues it is sent)."""
        with self.lock:
            self.waiters[token] = waiter
            if self.listener is None:
                thread = threading.Thread(target=self._listen, name="procthrottle-redis-wake",
                                          daemon=True)
                thread.start()  # raises under a thread limit: nothing recorded
                self.listener = thread

    def settle(self, token: str) -> Waiter | None:
        """Stop expecting ``token``; the waiter with its final state (GONE if it was waiting)."""
        with self.lock:
            self.queued.discard(token)
            waiter = self.waiters.pop(token, None)
            if waiter is not None and waiter.state == WAITING:
                waiter.state = GONE
            return waiter

    def mark_queued(self, token: str) -> None:
        """The server queued ``token`` (its acquire answered so)."""
        with self.lock:
            if token in self.waiters:
                self.queued.add(token)

    def _grant(self, token: str) -> None:
        with self.lock:
            waiter = self.waiters.get(token)
            if waiter is None or waiter.state != WAITING:
                return  # given up: its worker job gives the permit back
            waiter.state = GRANTED
        if not waiter.wake():  # its event loop is closed: nobody will hold the permit
            with self.lock:
                self.waiters.pop(token, None)
                waiter.state = GONE
            self.abandon(token)

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            failed = [w for w in self.waiters.values() if w.state == WAITING]
            for waiter in failed:
                waiter.state = FAILED
                waiter.error = exc
        for waiter in failed:
            waiter.wake()

    def _listen(self) -> None:
        """The listener thread: BLPOP the wake list, heartbeat, while anyone waits."""
        idle_since: float | None = None
        next_beat = 0.0
        beats = 0
        failing = False
        while True:
            with self.lock:
                tokens = [t for t, w in self.waiters.items() if w.state == WAITING]
                queued = [t for t in tokens if t in self.queued]
                if self.closed or not tokens:
                    now = time.monotonic()
                    if self.closed or (idle_since is not None and now - idle_since > KEEPALIVE):
                        self.listener = None
                        return
                    idle_since = idle_since or now
                    self.cond.wait(0.2)
                    continue
            idle_since = None
            try:
                if time.monotonic() >= next_beat:
                    # the keys' time to live is a minute or more: refresh it every 10th beat
                    self.calls._heartbeat(self.client, queued, beats % 10 == 0)
                    beats += 1
                    next_beat = time.monotonic() + HEARTBEAT
                granted = self.calls._pop_granted(self.wake_key, HEARTBEAT)
                if granted:
                    for token in granted:
                        self._grant(token)
                    self.calls._confirm(granted)  # their full leases, now that we hold them
                if failing:
                    log.info("Redis at %s answers again", self.describe)
                failing = False
            except (RedisUnavailableError, CallTimedOut, redis.RedisError) as exc:
                with self.lock:
                    nobody = not any(w.state == WAITING for w in self.waiters.values())
                if self.closed or nobody:
                    continue  # closed, or everyone left, while it waited: nobody to tell
                error = exc if isinstance(exc, RedisUnavailableError) else RedisUnavailableError(
                    f"Redis at {self.describe} stopped answering while tasks waited "
                    f"({type(exc).__name__}); nothing was taken"
                )
                if not failing:
                    log.warning("waiting on Redis at %s failed: %s", self.describe, exc)
                failing = True
                next_beat = 0.0
                self._fail(error)
                time.sleep(0.05)
            except BaseException as exc:  # a bug or interpreter exit: strand nobody
                self._fail(exc)
                with self.lock:
                    self.listener = None
                return

    # -- background jobs ------------------------------------------------------------------
    def abandon(self, token: str) -> None:
        """A waiter gave up ``token``: take it out of the queue, or give its permit back."""
        self.submit(lambda: self._cancel(token))

    def _cancel(self, token: str) -> None:
        self.calls._cancel(token, False, None)

    def release_later(self, tokens: list[str]) -> None:
        """Return permits from the worker thread (an async release never calls Redis)."""
        self.submit(lambda: self._release(tokens))

    def _release(self, tokens: list[str]) -> None:
        if self.calls._release_tokens(tokens, None):
            log.warning("a permit of %s was released after its lease had been lost",
                        self.describe)

    def submit(self, job: Callable[[], None]) -> None:
        with self.lock:
            self.jobs.append((time.monotonic() + GIVE_UP, job))
            if self.worker is None:
                thread = threading.Thread(target=self._work, name="procthrottle-redis-jobs",
                                          daemon=True)
                self.worker = thread
                thread.start()
            else:
                self.cond.notify_all()

    def _work(self) -> None:
        delay = 0.05
        while True:
            with self.lock:
                if not self.jobs:
                    self.cond.wait(KEEPALIVE)
                    if not self.jobs:
                        self.worker = None
                        return
                give_up, job = self.jobs.popleft()
                self.running += 1
            try:
                job()
                delay = 0.05
            except (RedisUnavailableError, CallTimedOut, redis.RedisError) as exc:
                if time.monotonic() < give_up:
                    with self.lock:
                        self.jobs.appendleft((give_up, job))
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                else:
                    log.warning("gave up a clean-up on Redis at %s: %s", self.describe,
                                type(exc).__name__)
            except Exception:
                log.exception("a clean-up on Redis at %s failed", self.describe)
            finally:
                with self.lock:
                    self.running -= 1

    def pending(self) -> int:
        """Jobs not done yet (for tests)."""
        with self.lock:
            return len(self.jobs) + self.running

    def close(self, exc: BaseException) -> None:
        """Fail the waiters; the threads exit (queued jobs are still done)."""
        self._fail(exc)
        with self.lock:
            self.closed = True
            self.cond.notify_all()

    def __repr__(self) -> str:
        return f"<Waiting {len(self.waiters)} on {self.describe}>"
