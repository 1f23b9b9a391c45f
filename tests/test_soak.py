"""The soak (benchmarks/soak.py) at 10 s: every part at once under SIGKILLs, then its invariants."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.timeout(180)
def test_soak_ten_seconds_keeps_every_invariant(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    out = subprocess.run(
        [PYTHON, "soak.py", "--seconds", "10", "--json", str(summary_path)],
        cwd=BENCHMARKS, env=python_env(), capture_output=True, text=True, timeout=170,
    )
    assert summary_path.exists(), out.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["problems"] == [], (summary, out.stderr[-4000:])
    assert out.returncode == 0, out.stderr[-3000:]
    # the chaos really happened, and the checks had something to check
    assert summary["holds"] > 200
    assert summary["max_concurrency"] == summary["limit"]
    assert summary["value_after"] == summary["limit"]
    assert summary["kills"].get("pool worker", 0) >= 1
    assert summary["kills"].get("sync/async holder", 0) >= 1
    assert summary["outcomes"]["completed"] > 100
    assert sum(summary["outcomes"].values()) == summary["tasks"]
