"""The rate limiters bench_rate.py compares, each behind one blocking ``acquire()``.

Every peer is made by a factory that runs in the process that uses it (after fork), from
a `Setup` made once in the parent (what must be shared: a multiprocessing bucket, a SQLite
file, a Redis server's URL). Peers whose state lives in one process only are marked so:
they are measured for their cost, not across processes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from procthrottle import RateLimiter

Acquire = Callable[[], object]


@dataclass
class Setup:
    """What the peers of one measure share: the rate, a Redis URL, a folder, parent state."""

    rate: float
    redis_url: str | None
    folder: str
    shared: dict[str, Any] = field(default_factory=dict)
    key: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:10]}")


@dataclass
class Peer:
    name: str
    cross_process: bool
    prepare: Callable[[Setup], None]  # in the parent, before the processes fork
    make: Callable[[Setup], Acquire]  # in each process
    needs_redis: bool = False

    def missing(self, redis_url: str | None) -> str | None:
        """Why this peer cannot run here (a package or redis-server missing), or None."""
        package = self.name.split()[0]
        module = {"pyrate-limiter": "pyrate_limiter", "throttled-py": "throttled"}.get(
            package, package
        )
        if importlib.util.find_spec(module) is None:
            return f"{package} not installed (the bench extra)"
        if "SQLite" in self.name and importlib.util.find_spec("filelock") is None:
            return "filelock not installed (the bench extra)"
        if self.needs_redis and (redis_url is None or importlib.util.find_spec("redis") is None):
            return "no redis-server or redis package"
        return None


def _nothing(setup: Setup) -> None:
    pass


# -- procthrottle ----------------------------------------------------------------------------
def _ours_prepare(setup: Setup) -> None:
    setup.shared["ours"] = RateLimiter(setup.rate)


def _ours(setup: Setup) -> Acquire:
    return setup.shared["ours"].acquire  # type: ignore[no-any-return]


def _ours_redis(setup: Setup) -> Acquire:
    from procthrottle.redis import RedisRateLimiter

    return RedisRateLimiter(setup.redis_url, setup.key, setup.rate).acquire  # type: ignore[arg-type]


# -- pyrate-limiter --------------------------------------------------------------------------
def _pyrate_rates(setup: Setup) -> list[Any]:
    from pyrate_limiter import Duration, Rate

    return [Rate(int(setup.rate), Duration.SECOND)]


def _pyrate(bucket: Any) -> Acquire:
    from pyrate_limiter import Limiter

    limiter = Limiter(bucket)

    def acquire() -> None:
        while not limiter.try_acquire("bench", blocking=True):  # False: gave up waiting
            pass

    return acquire


def _pyrate_memory(setup: Setup) -> Acquire:
    from pyrate_limiter import InMemoryBucket

    return _pyrate(InMemoryBucket(_pyrate_rates(setup)))


def _pyrate_mp_prepare(setup: Setup) -> None:
    from pyrate_limiter import MultiprocessBucket

    setup.shared["mp"] = MultiprocessBucket.init(_pyrate_rates(setup))


def _pyrate_mp(setup: Setup) -> Acquire:
    return _pyrate(setup.shared["mp"])


def _pyrate_sqlite_prepare(setup: Setup) -> None:
    from pyrate_limiter import SQLiteBucket

    path = os.path.join(setup.folder, f"{setup.key}.sqlite")
    setup.shared["sqlite"] = path
    SQLiteBucket.init_from_file(_pyrate_rates(setup), db_path=path, use_file_lock=True)


def _pyrate_sqlite(setup: Setup) -> Acquire:
    from pyrate_limiter import SQLiteBucket

    bucket = SQLiteBucket.init_from_file(
        _pyrate_rates(setup), db_path=setup.shared["sqlite"], create_new_table=False,
        use_file_lock=True,
    )  # fmt: skip
    return _pyrate(bucket)


def _pyrate_redis(setup: Setup) -> Acquire:
    from pyrate_limiter import RedisBucket
    from redis import Redis

    client = Redis.from_url(setup.redis_url)  # type: ignore[arg-type]
    return _pyrate(RedisBucket.init(_pyrate_rates(setup), client, setup.key))


# -- limits ----------------------------------------------------------------------------------
def _limits(storage_uri: str, moving: bool, setup: Setup) -> Acquire:
    from limits import RateLimitItemPerSecond, storage, strategies

    store = storage.storage_from_string(storage_uri)
    kind = strategies.MovingWindowRateLimiter if moving else strategies.FixedWindowRateLimiter
    window = kind(store)
    item = RateLimitItemPerSecond(int(setup.rate))
    key = setup.key

    def acquire() -> None:
        while not window.hit(item, key):  # limits only answers yes or no: poll
            time.sleep(0.0001)

    return acquire


def _limits_peer(backend: str, moving: bool) -> Callable[[Setup], Acquire]:
    def make(setup: Setup) -> Acquire:
        uri = "memory://" if backend == "memory" else str(setup.redis_url)
        return _limits(uri, moving, setup)

    return make


# -- throttled-py ----------------------------------------------------------------------------
def _throttled(backend: str, burst: int | None = 1) -> Callable[[Setup], Acquire]:
    def make(setup: Setup) -> Acquire:
        from throttled import MemoryStore, RedisStore, Throttled, per_sec

        store = MemoryStore() if backend == "memory" else RedisStore(server=setup.redis_url)
        # burst=1 is procthrottle's; throttled-py's default burst is the limit, which admits
        # up to twice the limit in the first second (burst + rate).
        quota = per_sec(int(setup.rate), burst=burst)
        throttle = Throttled(key=setup.key, using="gcra", quota=quota, store=store, timeout=60)

        def acquire() -> None:
            while throttle.limit().limited:  # it waits up to `timeout`, then says limited
                pass

        return acquire

    return make


PEERS = [
    Peer("procthrottle RateLimiter", True, _ours_prepare, _ours),
    Peer("procthrottle RedisRateLimiter", True, _nothing, _ours_redis, needs_redis=True),
    Peer("pyrate-limiter InMemoryBucket", False, _nothing, _pyrate_memory),
    Peer("pyrate-limiter MultiprocessBucket", True, _pyrate_mp_prepare, _pyrate_mp),
    Peer("pyrate-limiter SQLiteBucket", True, _pyrate_sqlite_prepare, _pyrate_sqlite),
    Peer("pyrate-limiter RedisBucket", True, _nothing, _pyrate_redis, needs_redis=True),
    Peer("limits memory, moving window", False, _nothing, _limits_peer("memory", True)),
    Peer("limits memory, fixed window", False, _nothing, _limits_peer("memory", False)),
    Peer("limits Redis, moving window", True, _nothing, _limits_peer("redis", True),
         needs_redis=True),
    Peer("limits Redis, fixed window", True, _nothing, _limits_peer("redis", False),
         needs_redis=True),
    Peer("throttled-py memory (GCRA)", False, _nothing, _throttled("memory")),
    Peer("throttled-py Redis (GCRA)", True, _nothing, _throttled("redis"),
         needs_redis=True),
    Peer("throttled-py Redis (GCRA, burst=limit)", True, _nothing,
         _throttled("redis", None), needs_redis=True),
]  # fmt: skip


def close(setup: Setup) -> None:
    ours = setup.shared.get("ours")
    if ours is not None:
        ours.close()


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A memory-only redis-server on a free loopback port, or None if none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64):
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def folder() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bench-rate-")
