"""Every script in examples/ runs, small, and says what it should (a smoke test).

The bound is what is checked: on a loaded machine fewer tasks than the limit may overlap.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUNS = {
    "seed_semaphore.py": ([], r"free permits now: 2/2"),
    "throttle_async_calls.py": (
        ["--calls", "60"],
        r"peak concurrent requests seen by the server: [1-5] \(limit 5\)",
    ),
    "gpu_section.py": (["--tasks", "6"], r"most tasks on the GPU at once: 1 \(limit 1\)"),
    "async_pipeline.py": (
        ["--items", "300", "--no-progress"],
        r"at most [12] tasks ran at once \(limit 2\)",
    ),
    "wrap_executor.py": ([], r"most writers at once: [12] \(limit 2\)"),
    "rate_limited_api.py": (["--requests", "30"], r"30 of 30 requests answered"),
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(RUNS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script: str) -> None:
    """... and warns of nothing, in any of its processes: e.g. not of forking a process that
    runs threads (deprecated from Python 3.12)."""
    args, expected = RUNS[script]
    env = python_env()
    env["PYTHONWARNINGS"] = "default"  # inherited by every process the example starts
    out = subprocess.run(
        [PYTHON, str(EXAMPLES / script), *args],
        env=env, capture_output=True, text=True, timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(expected, out.stdout), out.stdout
    assert not re.search(r"\w+Warning: ", out.stderr), out.stderr


@pytest.mark.timeout(60)
def test_async_pipeline_on_trio_with_progress_bar() -> None:
    out = subprocess.run(
        [PYTHON, str(EXAMPLES / "async_pipeline.py"), "--items", "200", "--trio"],
        env=python_env(), capture_output=True, text=True, timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert "200task" in out.stderr  # tqdm's bar, on stderr
    assert "scored 200 records" in out.stdout
