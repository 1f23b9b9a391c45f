"""``RedisRateLimiter``: the GCRA of ``RateLimiter`` in Redis, so one rate can span machines.

Each acquisition is one Lua script, run atomically on the server against the server's clock
(``TIME``): it reads the theoretical arrival times, reserves the next slot and answers how
long to wait for it, in microseconds. Clients only measure that wait on their own monotonic
clock; no client clock is compared with another. Only integers and one configuration string
are stored: nothing is ever unpickled from Redis.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import redis

from .._exceptions import SemaphoreClosedError
from .._kernel._validate import check_name
from .._rate._base import RateLimits, Reservation, max_wait_ns
from .._rate._parse import check_burst, check_extra, check_n, describe, rate_pair
from ._redis_link import CallTimedOut, Link, Script

_CLIENT_PARAMETERS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}
#: Milliseconds a limiter's state outlives the moment it stops mattering (its last slot).
GRACE_MS = 60_000

# KEYS: the hash. ARGV: config, burst, n, max_wait_us (-1: any), intervals_us...
# Returns {1, wait_us, old..., new...} when reserved, {0, wait_us} when refused,
# {-1, config} when the name exists with another configuration.
_RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cfg = redis.call('HGET', KEYS[1], 'cfg')
if not cfg then
    redis.call('HSET', KEYS[1], 'cfg', ARGV[1])
elseif cfg ~= ARGV[1] then
    return {-1, cfg}
end
local burst, n, maxwait = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k = #ARGV - 4
local old, slot = {}, now
for i = 1, k do
    local tat = tonumber(redis.call('HGET', KEYS[1], 't' .. i) or '0')
    old[i] = tat
    local start = math.max(tat, now) + (n - burst) * tonumber(ARGV[4 + i])
    if start > slot then slot = start end
end
if maxwait >= 0 and slot - now > maxwait then
    return {0, string.format('%d', slot - now)}
end
local reply = {1, string.format('%d', slot - now)}
local last = now
for i = 1, k do
    local new = math.max(old[i], slot) + n * tonumber(ARGV[4 + i])
    if new > last then last = new end
    reply[2 + i] = string.format('%d', old[i])
    reply[2 + k + i] = string.format('%d', new)
    redis.call('HSET', KEYS[1], 't' .. i, reply[2 + k + i])
end
-- once its last slot has passed the state is as good as none: it expires then (plus grace)
redis.call('PEXPIRE', KEYS[1], math.ceil((last - now) / 1000) + GRACE)
return reply
""".replace("GRACE", str(GRACE_MS)))
# KEYS: the hash. ARGV: k, old..., new...: put the old TATs back if the new ones are current.
_GIVE_BACK = Script("""
local k = tonumber(ARGV[1])
for i = 1, k do
    if redis.call('HGET', KEYS[1], 't' .. i) ~= ARGV[1 + k + i] then return 0 end
end
for i = 1, k do redis.call('HSET', KEYS[1], 't' .. i, ARGV[1 + i]) end
return 1
""")
# KEYS: the hash. ARGV: config. Stores the config unless one is there; returns the stored one.
_CLAIM = Script("""
if redis.call('HSETNX', KEYS[1], 'cfg', ARGV[1]) == 1 then
    redis.call('PEXPIRE', KEYS[1], GRACE)
end
return redis.call('HGET', KEYS[1], 'cfg')
""".replace("GRACE", str(GRACE_MS)))


def _intervals_us(pairs: Sequence[tuple[float, float]], burst: int) -> list[int]:
    # Rounded up: the limit never admits more than asked.
    result = sorted({max(1, math.ceil(per / rate * 1e6)) for rate, per in pairs})
    if result[-1] * burst > 2**50:
        raise ValueError("the rate spans too long a time; use a shorter period")
    return result


class RedisRateLimiter(RateLimits):
    """A `RateLimiter` whose state lives in Redis: one rate for every process on any machine.

    Same interface as `RateLimiter`. Each acquisition runs one Lua script on the server's
    clock, which reserves the next slot; the caller then sleeps until it. Pickles as its
    connection settings and name, so it can be passed to other processes and Dask workers.

    Args:
        client_or_url: A `redis.Redis` client or a `redis://` URL.
        name: The limiter's name in Redis (1 to 200 characters of `[A-Za-z0-9._-]`).
        rate: Acquisitions per `per` seconds, or a string such as `"10/s"`.
        per: The period of `rate` in seconds.
        burst: How many acquisitions may be admitted at once (>= 1).
        extra: More `(rate, per)` pairs (or rate strings) enforced together with the first.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad rate, burst or name, or a name that exists with other rates.
        RedisUnavailableError: Redis cannot be reached (nothing is changed).
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        name: str,
        rate: float | str,
        per: float = 1.0,
        *,
        burst: int = 1,
        extra: Sequence[tuple[float, float] | str] = (),
    ) -> None:
        self._setup(client_or_url, name, rate, per, burst, extra)
        self._claim_config()

    def _setup(
        self,
        client_or_url: redis.Redis | str,
        name: str,
        rate: float | str,
        per: float,
        burst: int,
        extra: Sequence[tuple[float, float] | str],
    ) -> None:
        """Everything but talking to Redis."""
        checked = check_name(name)
        if checked is None:
            raise TypeError("name must be a str, not None")
        self._name = checked
        self._pairs = [rate_pair(rate, per), *check_extra(extra)]
        self._burst = check_burst(burst)
        self._intervals = _intervals_us(self._pairs, self._burst)
        self._config = f"v1:{self._burst}:" + ",".join(map(str, self._intervals))
        self._link = Link(client_or_url)
        self._where = self._link.where
        self._source: str | dict[str, Any] = (
            client_or_url if isinstance(client_or_url, str)
            else self._link.plain_settings(_CLIENT_PARAMETERS)
        )
        self._key = "procthrottle:{" + self._name + "}:rate"
        self._closed = False

    def _claim_config(self) -> None:
        """Store this limiter's rates under its name unless some are there: other ones raise.

        So two limiters of one name with other rates are refused when made, not at their
        first acquisitions (each reservation checks again, on the server).
        """
        try:
            stored = self._link.run(None, _CLAIM, [self._key], [self._config])
        except CallTimedOut:
            raise self._link.timed_out("its rates") from None
        config = stored.decode() if isinstance(stored, bytes) else stored
        if config is not None and config != self._config:
            raise ValueError(self._mismatch(str(config)))

    # -- the scripts -------------------------------------------------------------------------
    def _args(self, n: int, max_wait_us: int) -> list[Any]:
        return [self._config, self._burst, n, max_wait_us, *self._intervals]

    def _answer(self, reply: list[Any]) -> Reservation | None:
        """A script's reply as a reservation in this host's monotonic nanoseconds."""
        received = time.monotonic_ns()
        status = int(reply[0])
        if status < 0:
            config = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise ValueError(self._mismatch(config))
        if status == 0:
            return None
        k = len(self._intervals)
        values = [int(v) for v in reply[2:]]
        return received + int(reply[1]) * 1000, values[:k], values[k:]

    def _mismatch(self, config: str) -> str:
        try:
            _, burst, intervals = config.split(":")
            theirs = describe([(1e6 / int(t), 1.0) for t in intervals.split(",")])
            theirs += f" (burst={burst})"
        except ValueError:
            theirs = "another configuration"
        return (
            f"rate limiter {self._name!r} already exists in Redis with {theirs}, not "
            f"{describe(self._pairs)} (burst={self._burst}); open it with the same rates and "
            "burst, or unlink it first"
        )

    def _reserve(self, n: int, max_wait: int | None) -> Reservation | None:
        """Reserve a slot at most ``max_wait`` ns away (None: any), in that time (a call cut
        short reserves nothing for this caller: at most a slot of the quota goes unused)."""
        if self._closed:
            self._raise_closed()
        wait_us = -1 if max_wait is None else max_wait // 1000
        started = time.monotonic_ns()
        try:
            reply = self._link.run(None if max_wait is None else max_wait / 1e9, _RESERVE,
                                   [self._key], self._args(n, wait_us))
        except CallTimedOut:
            if max_wait is None or time.monotonic_ns() - started < max_wait - 50_000_000:
                raise self._link.timed_out("a reservation") from None  # the call's own limit
            return None  # the caller's time ran out
        return self._answer(reply)

    def _give_back(self, reservation: Reservation) -> bool:
        if self._closed:
            return False
        _, old, new = reservation
        try:
            return bool(self._link.run(None, _GIVE_BACK, [self._key], [len(old), *old, *new]))
        except (CallTimedOut, redis.RedisError, ConnectionError):
            return False

    def _check_n(self, n: object) -> int:
        return check_n(n, self._burst)

    # -- the interface of RateLimiter --------------------------------------------------------
    def acquire(self, n: int = 1, *, block: bool = True, timeout: float | None = None) -> bool:
        """Take `n` units of the rate, sleeping until they are allowed.

        Args:
            n: The weight of this acquisition, 1 to `burst`.
            block: With False, return False at once unless the units are allowed now.
            timeout: The longest wait in seconds (None: no limit).

        Returns:
            True once admitted; False, reserving nothing, when the wait would be too long.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            SemaphoreClosedError: The limiter was closed.
        """
        n = self._check_n(n)
        reservation = self._reserve(n, max_wait_ns(block, timeout))
        return reservation is not None and self._sleep_until(reservation)

    @property
    def name(self) -> str:
        """The limiter's name in Redis."""
        return self._name

    def close(self) -> None:
        """Disconnect (a client passed in is left open); the limiter stays in Redis."""
        if self._closed:
            return
        self._closed = True
        self._link.close()

    def unlink(self) -> None:
        """Remove the limiter from Redis, then close."""
        if not self._closed:
            try:
                self._link.call(None, "DEL", self._key)
            except CallTimedOut:
                raise self._link.timed_out("an unlink") from None
        self.close()

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(name={self._name!r}, rate={self.rate:g}, per={self.per:g}, "
            f"burst={self._burst}, redis={self._where!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed rate limiter")
        return (_rebuild, (self._source, self._name, self._pairs, self._burst))

    def _raise_closed(self) -> NoReturn:
        raise SemaphoreClosedError(f"the Redis rate limiter {self._name!r} was closed")


def _rebuild(
    where: str | dict[str, Any], name: str, pairs: list[tuple[float, float]], burst: int
) -> RedisRateLimiter:
    client = where if isinstance(where, str) else redis.Redis(**where)
    try:
        return RedisRateLimiter(client, name, *pairs[0], burst=burst, extra=pairs[1:])
    finally:
        if not isinstance(client, str):
            client.close()
