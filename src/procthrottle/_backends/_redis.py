"""``RedisSemaphore``: permits as leases in Redis, so one limit can span machines.

Each permit is a member of a sorted set whose score is the time (Redis's own clock) at which
its lease expires. Acquiring first drops expired leases, so the permits of a holder that died
come back after at most ``lease`` seconds; a live holder's leases are renewed by a background
thread every ``lease / 3`` seconds. Everything runs in Lua scripts, atomically on the server.
Only integers and random tokens are stored: nothing is ever unpickled from Redis.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
import time
import uuid
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis

from .._async._semaphore import AsyncSemaphore
from .._exceptions import ProcThrottleError, SemaphoreClosedError
from .._kernel._semaphore import _HoldsPermits
from .._kernel._validate import check_count, check_limit, check_name, check_timeout

log = logging.getLogger("procthrottle.redis")

MAX_LIMIT = 2**31 - 1
_CLIENT_PARAMETERS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}


def client_settings(client: redis.Redis) -> dict[str, Any]:
    """The plain settings of the client's connections that ``Redis()`` takes (to rebuild it in
    another process, or as an asyncio client): no sockets, no callables, nothing pickled."""
    return {
        k: v for k, v in client.connection_pool.connection_kwargs.items()
        if k in _CLIENT_PARAMETERS and isinstance(v, str | int | float | bool)
    }  # fmt: skip
#: A blocked acquire polls Redis with a backoff that grows to this many seconds.
MAX_POLL = 0.05

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_CHECK_LIMIT = """
local stored = redis.call('GET', KEYS[2])
if not stored then
    redis.call('SET', KEYS[2], ARGV[1])
elseif tonumber(stored) ~= tonumber(ARGV[1]) then
    return -tonumber(stored)
end
"""
# KEYS: holders, limit. ARGV: limit, token, lease_ms. Returns 1 taken, 0 busy, -L limit is L.
_ACQUIRE = _NOW + _CHECK_LIMIT + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
    return 1
end
return 0
"""
# KEYS: holders, limit. ARGV: limit. Returns the free permits, or -L if the limit is L.
_OPEN = _NOW + _CHECK_LIMIT + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
"""
# KEYS: holders. ARGV: lease_ms, tokens... Returns the tokens whose lease had already expired.
_RENEW = _NOW + """
local lost = {}
for i = 2, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
        redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
    else
        table.insert(lost, ARGV[i])
    end
end
return lost
"""


class RedisUnavailableError(ProcThrottleError, ConnectionError):
    """Redis could not be reached; the semaphore's state is unchanged."""


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``: safe for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class RedisConnection:
    """What a Redis semaphore or rate limiter knows of its server: the client (made from a URL,
    or given), where it is (with no password, for messages and reprs), and how to reach it
    again from another process."""

    _url: str | None
    _where: str
    _client: redis.Redis
    _owns_client: bool

    def _connect(self, client_or_url: redis.Redis | str) -> None:
        if isinstance(client_or_url, str):
            self._url = client_or_url
            self._where = redact(client_or_url)
            self._client = redis.Redis.from_url(client_or_url)
            self._owns_client = True
        elif isinstance(client_or_url, redis.Redis):
            self._url, self._client, self._owns_client = None, client_or_url, False
            self._where = _describe(client_or_url)
        else:
            raise TypeError(
                "client_or_url must be a redis.Redis client or a redis:// URL, "
                f"not {type(client_or_url).__name__}"
            )

    def _reachable_as(self) -> str | dict[str, Any]:
        """The URL, or the client's plain settings: a picklable way to reach the server."""
        return self._url if self._url is not None else client_settings(self._client)

    def _unavailable(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise RedisUnavailableError(
                f"cannot reach Redis at {self._where} ({type(exc).__name__}: {exc}); is "
                "redis-server running there, and is the URL right? Nothing was changed"
            ) from None
        raise exc


def client_from(where: str | dict[str, Any]) -> redis.Redis | str:
    """The other end of `RedisConnection._reachable_as`."""
    return where if isinstance(where, str) else redis.Redis(**where)


class RedisSemaphore(_HoldsPermits, RedisConnection):
    """A semaphore shared through Redis by every process, on any machine, that opens ``name``.

    Same interface as `ProcessSemaphore`. Permits are leases: a holder that
    dies loses them after at most ``lease`` seconds, while a live holder's are renewed in the
    background. A permit is released by the handle that acquired it (``ValueError`` otherwise).
    Pickles as its connection settings and name, so it can be passed to other processes and
    to Dask workers. Making one makes one round trip (it checks the limit).

    Args:
        client_or_url: A ``redis.Redis`` client or a URL that ``redis.Redis.from_url``
            takes (``redis://``, ``rediss://``, ``unix://``).
        name: The semaphore's name in Redis: every client that uses it shares its permits.
            1 to 200 characters of ``[A-Za-z0-9._-]``.
        limit: Its number of permits (>= 1). Opening an existing name with another limit
            raises ``ValueError``.
        lease: Seconds (>= 0.1) after which a dead holder's permit comes back; a live
            holder renews its leases every ``lease / 3`` seconds.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad name, limit or lease, or a name that exists with another limit.
        RedisUnavailableError: Redis cannot be reached (nothing is changed).
    """

    #: Every call is a network round trip: `AsyncSemaphore` makes them all in its waiter
    #: thread, never on the event loop's thread.
    _procthrottle_offload = True

    def __init__(
        self, client_or_url: redis.Redis | str, name: str, limit: int, *, lease: float = 30.0
    ) -> None:
        checked = check_name(name)
        if checked is None:
            raise TypeError("name must be a str, not None")
        self._name = checked
        self._limit = check_limit(limit, maximum=MAX_LIMIT)
        seconds = check_timeout(lease)  # a number, not NaN
        if seconds is None or seconds < 0.1:
            raise ValueError(f"lease must be at least 0.1 seconds, got {lease}")
        self._lease = seconds
        self._connect(client_or_url)
        tag = "{" + self._name + "}"  # one hash slot for both keys (Redis Cluster)
        self._keys = (f"procthrottle:{tag}:holders", f"procthrottle:{tag}:limit")
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._open_script = self._client.register_script(_OPEN)
        self._renew_script = self._client.register_script(_RENEW)
        self._held: list[str] = []  # this handle's tokens; list.append/pop are atomic
        self._closed = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._renewer_lock = threading.Lock()
        self._check(self._call(self._open_script, self._limit))

    # -- the interface of ProcessSemaphore ---------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; False if none came (``block=False``, or ``timeout`` elapsed).

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
        timeout = check_timeout(timeout)
        if self._closed:
            self._raise_closed()
        token = uuid.uuid4().hex
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while not self._check(
            self._call(self._acquire_script, self._limit, token, int(self._lease * 1000))
        ):
            if not block or (deadline is not None and time.monotonic() >= deadline):
                return False
            pause = delay * random.uniform(0.5, 1.0)  # jitter: waiters do not poll in step
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 1.5, MAX_POLL)
        self._held.append(token)
        self._ensure_renewer()
        return True

    def release(self, n: int = 1) -> None:
        """Return ``n`` permits this handle holds.

        Args:
            n: How many (an int >= 1).

        Raises:
            ValueError: This handle holds fewer than ``n`` permits; nothing changes.
            SemaphoreClosedError: The handle was closed.
            RedisUnavailableError: Redis cannot be reached; the permits stay held.
        """
        check_count(n)
        if self._closed:
            self._raise_closed()
        tokens: list[str] = []
        try:
            for _ in range(n):
                tokens.append(self._held.pop())
        except IndexError:
            self._held.extend(reversed(tokens))
            raise ValueError(
                f"release(n={n}), but this handle holds {len(tokens)} permit(s) of "
                f"{self._name!r}; release permits through the handle that acquired them"
            ) from None
        try:
            self._client.zrem(self._keys[0], *tokens)
        except redis.RedisError as exc:
            self._held.extend(reversed(tokens))
            self._unavailable(exc)

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
        """Free permits now (expired leases count as free)."""
        return self._check(self._call(self._open_script, self._limit))

    def close(self) -> None:
        """Stop renewing, give back the permits this handle still holds, disconnect."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        held, self._held = self._held, []
        try:
            if held:
                self._client.zrem(self._keys[0], *held)
        except redis.RedisError:
            log.warning("could not return %d permit(s) of %r to Redis at %s; they expire "
                        "within %g s", len(held), self._name, self._where, self._lease)
        if self._owns_client:
            self._client.close()

    def unlink(self) -> None:
        """Remove the semaphore from Redis (its holders' permits with it), then close."""
        try:
            self._client.delete(*self._keys)
        except redis.RedisError as exc:
            self._unavailable(exc)
        self.close()

    def __repr__(self) -> str:
        return (
            f"RedisSemaphore(name={self._name!r}, limit={self._limit}, lease={self._lease}, "
            f"redis={self._where!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        return (_rebuild, (self._reachable_as(), self._name, self._limit, self._lease))

    # -- internals ---------------------------------------------------------------------------
    def _call(self, script: Any, *args: Any) -> int:
        try:
            return int(script(keys=self._keys, args=args))
        except redis.RedisError as exc:
            self._unavailable(exc)

    def _check(self, result: int) -> int:
        """A script's answer; negative means the name exists with another limit."""
        if result < 0:
            raise ValueError(
                f"semaphore {self._name!r} already exists in Redis with limit={-result}, "
                f"not {self._limit}; open it with limit={-result}, or unlink it first"
            )
        return result

    def _raise_closed(self) -> NoReturn:
        raise SemaphoreClosedError(f"the Redis semaphore {self._name!r} was closed")

    def _ensure_renewer(self) -> None:
        with self._renewer_lock:
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_forever, name="procthrottle-redis-lease", daemon=True
                )
                self._renewer.start()

    def _renew_forever(self) -> None:
        """Renew this handle's leases every lease/3 seconds while it holds any."""
        while not self._stop.wait(self._lease / 3):
            tokens = list(self._held)
            if not tokens:
                with self._renewer_lock:
                    if not self._held:
                        self._renewer = None
                        return
                continue
            try:
                lost = self._renew_script(keys=self._keys[:1],
                                          args=[int(self._lease * 1000), *tokens])
            except redis.RedisError as exc:
                log.warning("could not renew %d lease(s) of %r at %s: %s", len(tokens),
                            self._name, self._where, type(exc).__name__)
                continue
            if lost:
                log.warning("%d lease(s) of %r expired before renewal (was this process "
                            "paused for more than %g s?)", len(lost), self._name, self._lease)


def _rebuild(where: str | dict[str, Any], name: str, limit: int, lease: float) -> RedisSemaphore:
    return RedisSemaphore(client_from(where), name, limit, lease=lease)


class AsyncRedisSemaphore(AsyncSemaphore):
    """``await`` a `RedisSemaphore` on asyncio or trio (an `AsyncSemaphore` around one).

    No Redis call runs on the event loop's thread once it is built: acquires (polling with a
    backoff) and releases are made by the adapter's one waiter thread, so a stalled server
    delays the tasks that wait for it, never the loop. A Redis outage while tasks wait reaches
    them as `RedisUnavailableError`. Building it makes one round trip (it checks the limit), so
    build it before the loop starts or accept that one call.

    Args:
        client_or_url: A ``redis.Redis`` client or a ``redis://`` URL.
        name: The semaphore's name in Redis.
        limit: Its number of permits.
        lease: Seconds after which a dead holder's permit comes back.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad name, limit or lease, or a name that exists with another limit.
        RedisUnavailableError: Redis cannot be reached.
    """

    def __init__(
        self, client_or_url: redis.Redis | str, name: str, limit: int, *, lease: float = 30.0
    ) -> None:
        super().__init__(RedisSemaphore(client_or_url, name, limit, lease=lease))
