"""``RedisSemaphore``: permits as leases in Redis, so one limit can span machines.

Each permit is a token in a sorted set whose score is the time (Redis's own clock) at which
its lease expires; a live holder's leases are renewed by a background thread every
``lease / 3`` seconds, and a holder that dies loses its permits when the lease runs out.
Waiters queue in Redis in order of arrival and are woken by the release that frees their
permit (see `_redis_waiting`). Everything runs in Lua scripts (`_redis_lua`), atomically on
the server, and every call is bounded in time (`_redis_link`). Only integers and random
tokens are stored: nothing is ever unpickled from Redis.

Tokens belong to a process: a forked child starts with none, so it can neither release nor
close away its parent's permits.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

import redis

from .._exceptions import ProcThrottleError, SemaphoreClosedError
from .._kernel._semaphore import _HoldsPermits
from .._kernel._validate import check_count, check_limit, check_name, check_timeout
from . import _redis_lua as lua
from ._redis_holdings import Holdings, new_client
from ._redis_link import CallTimedOut, Link, RedisUnavailableError, Script, describe
from ._redis_waiting import ALIVE_MS, GRANTED, ThreadWaiter, Waiting

if TYPE_CHECKING:
    from .._async._semaphore import AsyncSemaphore

__all__ = ["LeaseLostError", "RedisSemaphore", "RedisUnavailableError", "describe"]

log = logging.getLogger("procthrottle.redis")

MAX_LIMIT = 2**31 - 1
#: Milliseconds the keys of a semaphore outlive their last use, beyond the longest lease.
GRACE_MS = 60_000
_CLIENT_PARAMETERS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}


class LeaseLostError(ProcThrottleError):
    """A permit's lease ran out before it was renewed or released (the holder was paused
    longer than the lease, Redis was unreachable that long, or Redis restarted without its
    data), so another holder may have been let in meanwhile: the limit did not hold for that
    time. Raised by ``release()``; the permit is no longer held either way."""


_locals_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _locals_lock
    _locals_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class RedisSemaphore(_HoldsPermits):
    """A semaphore shared through Redis by every process, on any machine, that opens ``name``.

    Same interface as `ProcessSemaphore`. Permits are leases: a holder that dies loses them
    after at most ``lease`` seconds, while a live holder's are renewed in the background; a
    holder whose lease was lost anyway can tell (`lease_lost`), and its ``release()`` raises
    `LeaseLostError`. Waiters queue in Redis first come, first served across all clients and
    are woken by the release, not by polling. Every Redis call is bounded by the caller's
    ``timeout`` (or the client's ``socket_timeout``, or 5 s), so a stalled server cannot hang
    a caller. A permit is released by the handle, in the process, that acquired it
    (``ValueError`` otherwise; a forked child holds none of its parent's). Pickles as its
    connection settings and name, so it can be passed to other processes and to Dask workers.

    Args:
        client_or_url: A ``redis.Redis`` client or a URL that ``redis.Redis.from_url``
            takes (``redis://``, ``rediss://``, ``unix://``).
        name: The semaphore's name in Redis: every client that uses it shares its permits.
            1 to 200 characters of ``[A-Za-z0-9._-]``.
        limit: Its number of permits (>= 1). Opening an existing name with another limit
            raises ``ValueError``.
        lease: Seconds (0.1 to a year) after which a dead holder's permit comes back; a live
            holder renews its leases in the background.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad name, limit or lease, or a name that exists with another limit.
        RedisUnavailableError: Redis cannot be reached (nothing is changed).
    """

    #: Every call is a network round trip: `AsyncSemaphore` makes them all in its waiter
    #: thread, never on the event loop's thread.
    _procthrottle_offload = True

    @staticmethod
    def _procthrottle_async_type() -> type[AsyncSemaphore]:
        """What ``AsyncSemaphore(sem)`` makes: the adapter that waits in the server's queue."""
        from ._redis_async import AsyncRedisSemaphore

        return AsyncRedisSemaphore

    def __init__(
        self, client_or_url: redis.Redis | str, name: str, limit: int, *, lease: float = 30.0
    ) -> None:
        checked = check_name(name)
        if checked is None:
            raise TypeError("name must be a str, not None")
        self._name = checked
        self._limit = check_limit(limit, maximum=MAX_LIMIT)
        seconds = check_timeout(lease)  # a number, not NaN
        if seconds is None or seconds < 0.1 or seconds > 86400 * 365:
            raise ValueError(f"lease must be 0.1 seconds to a year, got {lease}")
        self._lease = seconds
        self._lease_ms = int(seconds * 1000)
        self._link = Link(client_or_url)
        self._where = self._link.where
        self._source: str | dict[str, Any] = (
            client_or_url if isinstance(client_or_url, str)
            else self._link.plain_settings(_CLIENT_PARAMETERS)
        )
        tag = "procthrottle:{" + self._name + "}:"
        self._keys = [tag + k for k in ("holders", "limit", "queue", "clients", "seq", "gone")]
        self._wake_prefix = tag + "wake:"
        self._keep_ms = max(self._lease_ms, ALIVE_MS) + GRACE_MS
        self._closed = False
        self._local: Holdings | None = None
        self._free = self._limit
        self._free = int(self._run(lua.OPEN, [], None)[1])

    # -- the interface of ProcessSemaphore ---------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; False if none came (``block=False``, or ``timeout`` elapsed).

        Waits in the server's queue, first come first served, and returns within about
        ``timeout`` even when Redis stalls (a call cut short leaves nothing behind: its
        place or permit is given back once the server answers).

        Args:
            block: False: return at once if no permit is free.
            timeout: Seconds to wait at most (None: forever).

        Returns:
            True when a permit was taken, False when none came.

        Raises:
            SemaphoreClosedError: The handle was closed.
            RedisUnavailableError: Redis cannot be reached.
            ValueError: ``timeout`` is NaN, or the name now exists with another limit.
            TypeError: ``timeout`` is not a number.
        """
        seconds = check_timeout(timeout)
        self._check_open()
        if seconds is not None and seconds == float("inf"):
            seconds = None
        if not block:
            seconds = 0.0
        deadline = None if seconds is None else time.monotonic() + max(0.0, seconds)
        local = self._mine()
        token = self._token(local)
        waiter = None
        if deadline is None or seconds:
            waiter = ThreadWaiter()
            local.waiting.register(token, waiter)  # before the call: the grant may come first
        try:
            status = self._try_acquire(token, waiter is not None, _left(deadline))
        except CallTimedOut:
            local.waiting.settle(token)
            local.waiting.abandon(token)
            if deadline is None or deadline - time.monotonic() > 0.05:  # the call's limit
                raise self._link.timed_out("an acquire") from None
            return False  # the caller's time ran out
        except ValueError:  # the name has another limit: nothing was done
            local.waiting.settle(token)
            raise
        except BaseException:
            local.waiting.settle(token)
            local.waiting.abandon(token)
            raise
        if status != 0:
            local.waiting.settle(token)
            if status == 1:
                self._took(local, token)
                return True
            return False
        assert waiter is not None
        local.waiting.mark_queued(token)
        return self._wait(local, token, waiter, deadline)

    def _wait(self, local: Holdings, token: str, waiter: ThreadWaiter,
              deadline: float | None) -> bool:
        try:
            waiter.event.wait(_left(deadline))
        except BaseException:  # interrupted: our place (or a permit granted) goes back
            if local.waiting.settle(token) is waiter and waiter.state == GRANTED:
                try:
                    self._release_tokens([token], None)
                except Exception:  # the interruption matters more: its lease runs out
                    log.warning("could not return a permit of %r to Redis at %s after an "
                                "interrupted acquire", self._name, self._where)
            else:
                local.waiting.abandon(token)
            raise
        local.waiting.settle(token)
        if waiter.state == GRANTED:
            self._took(local, token)
            return True
        if waiter.error is not None:
            local.waiting.abandon(token)
            raise waiter.error
        # Timed out: leave the queue now -- or keep a permit granted at this very moment.
        try:
            if self._cancel(token, True, 0.0) == 1:
                self._took(local, token)
                return True
        except (CallTimedOut, RedisUnavailableError, redis.RedisError):
            local.waiting.abandon(token)  # the worker retries until the server answers
        return False

    def release(self, n: int = 1) -> None:
        """Return ``n`` permits this handle holds in this process (``ValueError``, nothing
        changed, if fewer). Raises `LeaseLostError` if the lease of one of them had been lost
        (the permits are released all the same).

        Args:
            n: How many (an int >= 1).

        Raises:
            ValueError: This handle holds fewer than ``n`` permits; nothing changes.
            LeaseLostError: A lease was lost before the release (the permits are released).
            SemaphoreClosedError: The handle was closed.
            RedisUnavailableError: Redis cannot be reached.
        """
        check_count(n)
        self._check_open()
        local = self._mine()
        tokens = self._take_back(local, n)
        try:
            lost = self._release_tokens(tokens, None)
        except CallTimedOut:
            local.held.extend(tokens)
            raise self._link.timed_out("a release") from None
        except BaseException:
            local.held.extend(tokens)  # still ours (and renewed): release again
            raise
        self._after_release(local, tokens, lost)

    def _take_back(self, local: Holdings, n: int) -> list[str]:
        tokens: list[str] = []
        try:
            for _ in range(n):
                tokens.append(local.held.pop())
        except IndexError:
            local.held.extend(reversed(tokens))
            raise ValueError(
                f"release(n={n}), but this handle holds {len(tokens)} permit(s) of "
                f"{self._name!r} in this process; release permits through the handle that "
                "acquired them, in the process that acquired them"
            ) from None
        return tokens

    def _after_release(self, local: Holdings, tokens: list[str], lost: int) -> None:
        known = local.lost.intersection(tokens)
        local.lost.difference_update(tokens)
        if lost or known:
            raise LeaseLostError(
                f"the lease of {max(lost, len(known))} permit(s) of {self._name!r} ran out "
                f"before this release (held longer than lease={self._lease:g} s without a "
                "renewal: the process paused, Redis was unreachable, or Redis restarted), so "
                "another holder may have run meanwhile; the permit is released"
            )

    @property
    def limit(self) -> int:
        """How many permits the semaphore has (leases alive at once, at most)."""
        return self._limit

    @property
    def name(self) -> str:
        """The semaphore's name: every client that uses this name shares its permits."""
        return self._name

    @property
    def lease(self) -> float:
        """Seconds after which a dead holder's permit comes back."""
        return self._lease

    @property
    def value(self) -> int:
        """Free permits now (expired leases count as free): one round trip."""
        self._check_open()
        return int(self._run(lua.OPEN, [], None)[1])

    @property
    def lease_lost(self) -> bool:
        """Whether a permit this handle holds (in this process) lost its lease: the renewer
        found it gone (taken over after it expired, or Redis restarted). Its ``release()``
        will raise `LeaseLostError`."""
        local = self._local
        if local is None or local.pid != os.getpid():
            return False
        return bool(local.lost.intersection(local.held))

    def close(self) -> None:
        """Stop renewing, give back the permits this handle holds in this process (a forked
        child's close never touches its parent's), disconnect."""
        if self._closed:
            return
        self._closed = True
        local = self._local
        if local is not None and local.pid == os.getpid():
            local.stop.set()
            local.waiting.close(SemaphoreClosedError(f"the Redis semaphore {self._name!r} "
                                                     "was closed"))
            held, local.held = local.held, []
            if held:
                try:
                    self._release_tokens(held, None)
                except (CallTimedOut, RedisUnavailableError, redis.RedisError):
                    log.warning("could not return %d permit(s) of %r to Redis at %s; they "
                                "expire within %g s", len(held), self._name, self._where,
                                self._lease)
        self._link.close()

    def unlink(self) -> None:
        """Remove the semaphore from Redis (its holders' permits with it), then close."""
        try:
            self._link.call(None, "DEL", *self._keys)
        except CallTimedOut:
            raise self._link.timed_out("an unlink") from None
        self.close()

    def __repr__(self) -> str:
        return (
            f"RedisSemaphore(name={self._name!r}, limit={self._limit}, lease={self._lease}, "
            f"redis={self._where!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        return (_rebuild, (self._source, self._name, self._limit, self._lease))

    # -- the calls (each one script, bounded in time) ----------------------------------------
    def _run(self, script: Script, extra: list[Any], timeout: float | None,
             keep: bool = True) -> list[Any]:
        args = [self._limit, self._wake_prefix, self._keep_ms if keep else 0, ALIVE_MS, *extra]
        reply = self._link.run(timeout, script, self._keys, args)
        if int(reply[0]) == -1:
            raise ValueError(
                f"semaphore {self._name!r} already exists in Redis with limit={reply[1]}, "
                f"not {self._limit}; open it with limit={reply[1]}, or unlink it first"
            )
        return list(reply)

    def _try_acquire(self, token: str, queue: bool, timeout: float | None) -> int:
        """1 taken, 0 queued (a grant will come), 2 busy."""
        reply = self._run(lua.ACQUIRE, [token, "1" if queue else "0"], timeout)
        self._free = int(reply[1])
        return int(reply[0])

    def _release_tokens(self, tokens: list[str], timeout: float | None) -> int:
        """Release ``tokens``; how many had lost their lease."""
        reply = self._run(lua.RELEASE, tokens, timeout)
        self._free = int(reply[2])
        return int(reply[1])

    def _cancel(self, token: str, keep: bool, timeout: float | None) -> int:
        return int(self._run(lua.CANCEL, [token, "1" if keep else "0"], timeout)[0])

    def _heartbeat(self, client: str, tokens: list[str], keep: bool) -> None:
        reply = self._run(lua.HEARTBEAT, [client, *tokens], None, keep)
        self._free = int(reply[1])

    def _pop_granted(self, key: str, seconds: float) -> list[str]:
        # blocks at most half the call's time limit, so a short socket_timeout still works
        seconds = min(seconds, self._link.default_timeout / 2)
        reply = self._link.call(self._link.default_timeout, "BLPOP", key, f"{seconds:.3f}")
        if not reply:
            return []
        tokens = [reply[1].decode()]
        more = self._link.call(None, "LPOP", key, 1000)
        return tokens + [t.decode() for t in more or ()]

    # -- internals ---------------------------------------------------------------------------
    def _mine(self) -> Holdings:
        """This process's state of the handle (a fresh one, holding nothing, after a fork)."""
        local = self._local
        if local is None or local.pid != os.getpid():
            with _locals_lock:
                local = self._local
                if local is None or local.pid != os.getpid():
                    client = new_client()
                    waiting = Waiting(self, client, self._wake_prefix + client, self._where)
                    local = self._local = Holdings(self, waiting)
        return local

    def _token(self, local: Holdings) -> str:
        return f"{local.client}-{self._lease_ms}-{secrets.token_hex(8)}"

    def _took(self, local: Holdings, token: str) -> None:
        local.held.append(token)
        local.ensure_renewer()

    def _check_open(self) -> None:
        if self._closed:
            raise SemaphoreClosedError(f"the Redis semaphore {self._name!r} was closed")

    def _raise_closed(self) -> NoReturn:
        raise SemaphoreClosedError(f"the Redis semaphore {self._name!r} was closed")

    def _confirm(self, tokens: list[str]) -> None:
        """Renew permits just granted to this process's waiters to their full lease."""
        lost = self._renew(tokens, None)
        if lost:
            self._mine().lost.update(lost)

    def _renew(self, tokens: list[str], timeout: float | None) -> set[str]:
        """Renew the leases of ``tokens``; the ones that were lost."""
        reply = self._run(lua.RENEW, tokens, timeout)
        return {t.decode() if isinstance(t, bytes) else str(t) for t in reply[1:]}


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def client_from(where: str | dict[str, Any]) -> redis.Redis | str:
    """A client (or URL) from what `RedisSemaphore.__reduce__` stored."""
    return where if isinstance(where, str) else redis.Redis(**where)


def _rebuild(where: str | dict[str, Any], name: str, limit: int, lease: float) -> RedisSemaphore:
    client = client_from(where)
    try:
        return RedisSemaphore(client, name, limit, lease=lease)
    finally:
        if not isinstance(client, str):
            client.close()
