"""The benchmarks still run (at smoke-test sizes); their numbers live in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", ["bench_semaphore.py", "bench_async.py", "bench_pool.py"])
def test_benchmark_runs_quick(script: str) -> None:
    out = subprocess.run(
        [PYTHON, script, "--quick"],
        cwd=BENCHMARKS, env=python_env(), capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 4, out.stdout
