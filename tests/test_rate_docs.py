"""The rate example and benchmark run, and say what they should."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(60)
def test_rate_limited_api_example_keeps_the_rate() -> None:
    out = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "rate_limited_api.py"), "--requests", "40"],
        env=python_env(), capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "40 of 40 requests answered" in out.stdout
    match = re.search(r"observed rate after the burst: ([\d.]+) requests/s", out.stdout)
    assert match is not None, out.stdout
    # 20/s, measured at the server over the second half (arrival jitter: a few %)
    assert 17.0 <= float(match[1]) <= 21.0
    busiest = re.search(r"most requests in any 1 s window: (\d+)", out.stdout)
    assert busiest is not None
    assert int(busiest[1]) <= 25 + 1  # rate + burst (+1: arrival times include latency)


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
