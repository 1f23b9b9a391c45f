"""How a Redis semaphore or rate limiter reaches its server: every call bounded in time.

A `Link` keeps its own connections, made from the settings of the URL or client it was given,
and runs each command with a socket timeout of the caller's remaining time (or
`DEFAULT_TIMEOUT` when the caller has none, or the client's own ``socket_timeout``), with no
retry: so a stalled server or a silent partition costs a caller at most its own timeout,
never forever. Where the server is, for messages, reprs and logs, is written without any
password, in every form redis-py accepts (``user:pass@``, ``?password=``, ``unix://``, a
client).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._exceptions import ProcThrottleError

#: Seconds a Redis call may take when the caller set no timeout (and the client none either):
#: a server that does not answer for this long is an outage, not a wait.
DEFAULT_TIMEOUT = 5.0
#: The least time a call is given, even when the caller's own time is (almost) up.
MIN_CALL = 0.1
#: Idle connections kept per link (a burst of callers opens more, closed after their call).
MAX_IDLE = 16


class RedisUnavailableError(ProcThrottleError, ConnectionError):
    """Redis could not be reached (or did not answer in time); nothing was taken."""


class CallTimedOut(Exception):
    """A call ran out of the caller's time: the server may or may not have run it."""


def describe(kwargs: dict[str, Any]) -> str:
    """Where the server is, as a URL with any password written ``***``."""
    secret = ":***@" if kwargs.get("password") else ""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{secret}{kwargs['path']}?db={db}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{secret}{host}:{port}/{db}"


def settings_of(client_or_url: redis.Redis | str) -> tuple[type[Any], dict[str, Any]]:
    """The connection class and settings of a URL or client (refusing anything else)."""
    if isinstance(client_or_url, str):
        try:
            pool = redis.ConnectionPool.from_url(client_or_url)
        except ValueError as exc:
            raise ValueError(
                "client_or_url must be a redis://, rediss:// or unix:// URL: "
                f"{mask(str(exc), client_or_url)}"
            ) from None
    elif isinstance(client_or_url, redis.Redis):
        pool = client_or_url.connection_pool
    else:
        raise TypeError(
            "client_or_url must be a redis.Redis client or a redis:// URL, "
            f"not {type(client_or_url).__name__}"
        )
    return pool.connection_class, dict(pool.connection_kwargs)


def mask(text: str, *secrets: object) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return text


class _Stale(Exception):
    """An idle connection turned out closed: try a fresh one."""


class Script:
    """A Lua script: its SHA1 for EVALSHA, and its text for when the server lost it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class Link:
    """Bounded calls to one Redis server, on connections of this process only.

    Connections are never shared with a forked child: a child makes its own.
    """

    def __init__(self, client_or_url: redis.Redis | str) -> None:
        self._class, kwargs = settings_of(client_or_url)
        self._password = kwargs.get("password")
        self.where = describe(kwargs)
        own = kwargs.get("socket_timeout")
        self.default_timeout = float(own) if isinstance(own, int | float) and own > 0 else (
            DEFAULT_TIMEOUT
        )
        kwargs["retry"] = Retry(NoBackoff(), 0)  # one try, bounded: the caller decides
        kwargs["decode_responses"] = False
        kwargs.pop("retry_on_timeout", None)
        kwargs.pop("retry_on_error", None)
        self._kwargs = kwargs
        self._free: list[Any] = []
        self._closed = False  # then a connection back from a call is closed, not kept
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def plain_settings(self, allowed: frozenset[str]) -> dict[str, Any]:
        """The settings that a ``Redis()`` of another process can be made from."""
        return {k: v for k, v in self._kwargs.items()
                if k in allowed and isinstance(v, str | int | float | bool)}

    def _take(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
                self._free, self._pid = [], os.getpid()
            if self._free:
                return self._free.pop()
        return self._class(**self._kwargs)

    def call(self, timeout: float | None, *args: Any) -> Any:
        """Run one command within ``timeout`` seconds (None: the default).

        Raises `CallTimedOut` when the time ran out (the server may have run the command),
        `RedisUnavailableError` when the server cannot be reached; a reply that is an error
        is raised as redis-py's exception. An idle connection the server closed (it
        restarted, or dropped idle clients) is replaced once.
        """
        limit = self.default_timeout if timeout is None else min(
            max(timeout, MIN_CALL), self.default_timeout
        )
        deadline = time.monotonic() + limit
        while True:  # each stale connection is dropped: at worst a fresh one is made
            try:
                return self._call(self._take(), limit, deadline, args)
            except _Stale:
                continue

    def _call(self, conn: Any, limit: float, deadline: float, args: tuple[Any, ...]) -> Any:
        ok = False
        fresh = conn._sock is None
        try:
            conn.socket_connect_timeout = conn.socket_timeout = limit
            if fresh:
                conn.connect()
            conn._sock.settimeout(max(0.001, deadline - time.monotonic()))
            conn.send_command(*args, check_health=False)
            conn._sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply = conn.read_response()
            ok = True
            return reply
        except redis.ResponseError:
            ok = True  # the connection is fine: the command failed
            raise
        except redis.TimeoutError:
            raise CallTimedOut(f"Redis at {self.where} did not answer within {limit:g} s") \
                from None
        except (redis.ConnectionError, OSError) as exc:
            if not fresh and time.monotonic() < deadline:
                raise _Stale from None
            self.unavailable(exc)
        finally:
            keep = False
            if ok and self._pid == os.getpid():
                with self._lock:
                    if len(self._free) < MAX_IDLE and not self._closed:
                        self._free.append(conn)
                        keep = True
            if not keep:
                conn.disconnect()

    def run(self, timeout: float | None, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (loading it again if the server lost it, e.g. after a restart)."""
        try:
            return self.call(timeout, "EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.call(timeout, "SCRIPT", "LOAD", script.text)
            return self.call(timeout, "EVALSHA", script.sha, len(keys), *keys, *args)

    def unavailable(self, exc: BaseException) -> NoReturn:
        """Raise `RedisUnavailableError` for ``exc``, with no password in the message."""
        detail = mask(f"{type(exc).__name__}: {exc}", self._password)
        raise RedisUnavailableError(
            f"cannot reach Redis at {self.where} ({detail}); is redis-server running there, "
            "and is the URL right? Nothing was taken"
        ) from None

    def timed_out(self, what: str) -> RedisUnavailableError:
        """The error for a call that found no answer within the default time."""
        return RedisUnavailableError(
            f"Redis at {self.where} did not answer {what} within {self.default_timeout:g} s "
            "(stalled, or a network partition); nothing was taken"
        )

    def close(self) -> None:
        """Disconnect every idle connection of this process, and each busy one as its call
        ends (the link still works: a later call opens a connection for itself)."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            mine = self._pid == os.getpid()
        if mine:
            for conn in free:
                conn.disconnect()
