"""The rate example and benchmark run, and say what they should."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

ROOT = Path(__file__).resolve().parents[1]


#: Loaded by every process of the example (sitecustomize): appends each admission's slot, in
#: monotonic ns, as the limiter decided it, before any sleep until it.
SLOT_RECORDER = """
import os, threading, time
from procthrottle._rate._limiter import RateLimiter

_path = os.environ["SLOTS_FILE"]
_inside = threading.local()
_reserve, _take_now = RateLimiter._reserve, RateLimiter._take_now


def _record(slot):
    fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % slot)
    os.close(fd)


def _take_now_recorded(self, n):
    _inside.taking = True
    try:
        taken = _take_now(self, n)
    finally:
        _inside.taking = False
    if taken:
        _record(time.monotonic_ns())  # admitted now: no sleep follows
    return taken


def _reserve_recorded(self, n, max_wait):
    reservation = _reserve(self, n, max_wait)
    if reservation is not None and not getattr(_inside, "taking", False):
        _record(reservation[0])
    return reservation


RateLimiter._reserve, RateLimiter._take_now = _reserve_recorded, _take_now_recorded
"""


def busiest_window_ns(slots: list[int], window: int) -> int:
    """Most slots in any half-open window ``(t - window, t]``."""
    slots = sorted(slots)
    best = lo = 0
    for hi, t in enumerate(slots):
        while slots[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.mark.timeout(60)
def test_rate_limited_api_example_keeps_the_rate(tmp_path: Path) -> None:
    """The bound holds on the admissions themselves, timed inside the limiter: arrivals at the
    example's server also carry each worker's wake-up and request delay, which the limiter
    cannot bound (27 arrivals in one second were seen at 20/s + burst 5 on a loaded machine)."""
    (tmp_path / "sitecustomize.py").write_text(SLOT_RECORDER)
    slots_file = tmp_path / "slots"
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    env["SLOTS_FILE"] = str(slots_file)
    out = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "rate_limited_api.py"), "--requests", "40"],
        env=env, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "40 of 40 requests answered" in out.stdout
    slots = [int(line) for line in slots_file.read_text().split()]
    assert len(slots) == 40  # every admission recorded, once
    assert busiest_window_ns(slots, 10**9) <= 20 + 5  # rate + burst, exactly
    match = re.search(r"observed rate after the burst: ([\d.]+) requests/s", out.stdout)
    assert match is not None, out.stdout
    # 20/s, measured at the server over the second half (arrival jitter: a few %)
    assert 17.0 <= float(match[1]) <= 21.0
    assert re.search(r"most requests arriving in any 1 s window: \d+", out.stdout), out.stdout


@pytest.mark.timeout(180)
def test_rate_benchmark_runs_quick() -> None:
    out = subprocess.run(
        [PYTHON, "bench_rate.py", "--quick"],
        cwd=ROOT / "benchmarks", env=python_env(), capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 8, out.stdout
    assert "CPU burnt while waiting" in out.stdout
