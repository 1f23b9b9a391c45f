"""A process in a Linux time namespace shares a named RateLimiter with the host's processes.

``unshare --time --monotonic S`` starts a process whose CLOCK_MONOTONIC is S seconds ahead
of the host's (containers do this). The shared state is kept in the host's clock, so such a
process neither blocks the others (a state a day ahead) nor is blocked by them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from helpers import python_env, unique_name
from procthrottle import RateLimiter
from procthrottle._rate import _clock, _store

pytestmark = pytest.mark.timeout(60)


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            ["unshare", "--time", "--monotonic", "100000", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="needs `unshare --time` (Linux >= 5.6, root or CAP_SYS_ADMIN)"
)


@pytest.fixture
def named() -> Iterator[str]:
    name = unique_name("pt-rate-timens")
    yield name
    _store.unlink_named(name)


def in_namespace(offset: int, code: str) -> str:
    """Run ``code`` in a new time namespace whose monotonic clock is ``offset`` s ahead."""
    done = subprocess.run(
        ["unshare", "--time", "--monotonic", str(offset), sys.executable, "-c",
         textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_unshare
@pytest.mark.parametrize("offset", [100000, 3 * 86400])
def test_a_process_in_a_time_namespace_blocks_nobody(named: str, offset: int) -> None:
    limiter = RateLimiter(10, name=named)  # one per 100 ms
    out = in_namespace(
        offset,
        f"""
        import time
        from procthrottle import RateLimiter
        from procthrottle._rate import _clock
        limiter = RateLimiter(10, name={named!r})
        assert limiter.acquire(timeout=2)
        assert limiter.acquire(timeout=2)  # the next slot, 100 ms later
        print(time.monotonic() - _clock.now_ns() / 1e9)
        limiter.close()
        """,
    )
    assert float(out) == pytest.approx(offset, abs=1)  # it was in the namespace
    start = time.monotonic()
    assert limiter.acquire(timeout=2)  # before the fix: False, the state a day ahead
    assert limiter.acquire(timeout=2)
    assert time.monotonic() - start < 0.5
    (tat,) = limiter._store.read()
    assert abs(tat - time.monotonic_ns()) < 1e9  # the state is in the host's clock
    limiter.close()


@needs_unshare
def test_a_process_in_a_time_namespace_is_not_blocked(named: str) -> None:
    """The host's processes fill the next 2 s; the namespaced one waits 2 s, not 2 s plus
    or minus its offset, and the window quota's ring stays in one clock too."""
    limiter = RateLimiter(10, name=named, burst=1, extra=[(30, 3)])
    for _ in range(20):
        assert limiter._reserve(1, None) is not None  # slots up to +1.9 s
    out = in_namespace(
        100000,
        f"""
        import time
        from procthrottle import RateLimiter
        limiter = RateLimiter(10, name={named!r}, burst=1, extra=[(30, 3)])
        start = time.monotonic()
        assert limiter.acquire(timeout=5)
        print(time.monotonic() - start)
        limiter.close()
        """,
    )
    assert 1.8 < float(out) < 3.0, out
    limiter.close()


def test_the_offset_is_read_from_the_kernel() -> None:
    """Here (no namespace, or the suite's own one): the host clock is monotonic minus the
    offset /proc/self/timens_offsets gives, 0 outside any time namespace."""
    offset = _clock.offset_ns()
    assert abs(time.monotonic_ns() - offset - _clock.now_ns()) < 50_000_000
