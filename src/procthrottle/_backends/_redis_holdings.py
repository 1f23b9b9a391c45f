"""What one `RedisSemaphore` handle holds in one process, and the thread that renews it.

Tokens belong to a process: a forked child gets a fresh `Holdings` (holding nothing), so it
can neither release nor close away its parent's permits. The renewer renews this process's
leases every ``lease / 3`` seconds while it holds any, and records the ones it finds lost
(taken over after they expired, or gone with a Redis restart), which the holder can then see
(``lease_lost``) and hear (`LeaseLostError` from ``release()``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Protocol

import redis

from ._redis_link import CallTimedOut, RedisUnavailableError
from ._redis_waiting import Waiting

log = logging.getLogger("procthrottle.redis")


def new_client() -> str:
    """A random id for this process's waiters and tokens."""
    return secrets.token_hex(8)


class Renews(Protocol):
    """What the renewer asks of its semaphore."""

    @property
    def lease(self) -> float: ...
    @property
    def name(self) -> str: ...
    _where: str

    def _renew(self, tokens: list[str], timeout: float) -> set[str]: ...


class Holdings:
    """The tokens a handle holds in this process, those known lost, and their renewer."""

    def __init__(self, sem: Renews, waiting: Waiting) -> None:
        self.sem = sem
        self.pid = os.getpid()
        self.client = waiting.client
        self.waiting = waiting
        self.held: list[str] = []  # list.append/pop are atomic
        self.lost: set[str] = set()
        self.stop = threading.Event()
        self.renewer: threading.Thread | None = None
        self.lock = threading.Lock()

    def ensure_renewer(self) -> None:
        with self.lock:
            if self.renewer is None or not self.renewer.is_alive():
                self.renewer = threading.Thread(
                    target=self._renew_forever, name="procthrottle-redis-lease", daemon=True
                )
                self.renewer.start()

    def _renew_forever(self) -> None:
        """Renew this process's leases every lease/3 seconds while it holds any."""
        sem = self.sem
        period = sem.lease / 3
        while not self.stop.wait(period):
            tokens = list(self.held)
            if not tokens:
                with self.lock:
                    if not self.held:
                        self.renewer = None
                        return
                continue
            try:
                lost = sem._renew(tokens, period)
            except (CallTimedOut, RedisUnavailableError, redis.RedisError) as exc:
                log.warning("could not renew %d lease(s) of %r at %s: %s", len(tokens),
                            sem.name, sem._where, type(exc).__name__)
                continue
            except ValueError:
                continue  # the name was unlinked and made again with another limit
            if lost - self.lost:
                log.warning("%d lease(s) of %r at %s were lost before renewal (was this "
                            "process paused for more than %g s, or Redis restarted?)",
                            len(lost - self.lost), sem.name, sem._where, sem.lease)
            self.lost.update(lost)
