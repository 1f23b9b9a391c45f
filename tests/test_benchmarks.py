"""The benchmarks still run (at smoke-test sizes); their numbers live in docs/benchmarks.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py")))
def test_benchmark_runs_quick(script: str) -> None:
    out = subprocess.run(
        [PYTHON, script, "--quick"],
        cwd=BENCHMARKS, env=python_env(), capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 4, out.stdout


@pytest.mark.timeout(120)
def test_one_command_writes_the_tables(tmp_path: Path) -> None:
    """`python -m benchmarks` runs the scripts and writes the results page (and plots)."""
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks", "--quick", "--no-install", "--only", "recovery",
         "--results", str(tmp_path / "results.md"), "--img", str(tmp_path / "img")],
        cwd=BENCHMARKS.parent, env=python_env(), capture_output=True, text=True, timeout=110,
    )
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "results.md").read_text()
    assert "Machine: " in page
    assert "### `bench_recovery.py`" in page
    rows = [line for line in page.splitlines() if line.startswith("| SIGKILLed holder")]
    assert len(rows) >= 2, page
    crash_safe = next(row for row in rows if "(crash-safe)" in row)
    assert "never" not in crash_safe.split("|")[2], crash_safe  # the permit came back


def published_files() -> dict[str, bytes]:
    root = BENCHMARKS.parent
    paths = [BENCHMARKS / "results.md", *sorted((root / "docs" / "img").iterdir())]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


@pytest.mark.timeout(120)
def test_a_quick_run_leaves_the_published_results_alone() -> None:
    """`--quick` (smoke-test sizes) writes into a temporary folder it prints, never over
    benchmarks/results.md and docs/img/ (here with the fastest scenario)."""
    before = published_files()
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks", "--quick", "--no-install", "--only", "import"],
        cwd=BENCHMARKS.parent, env=python_env(), capture_output=True, text=True, timeout=110,
    )
    assert out.returncode == 0, out.stderr
    assert published_files() == before
    wrote = re.search(r"^== wrote (\S+) and (\S+)/$", out.stdout, re.MULTILINE)
    assert wrote is not None, out.stdout
    page, img = Path(wrote[1]), Path(wrote[2])
    try:
        assert page.parent != BENCHMARKS
        assert img == page.parent / "img"
        assert "### `bench_import.py`" in page.read_text()
        assert "--quick" in page.read_text()
    finally:
        shutil.rmtree(page.parent)


def test_the_results_options_are_documented() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks", "--help"], cwd=BENCHMARKS.parent, env=python_env(),
        capture_output=True, text=True, timeout=30, check=True,
    )
    help_text = " ".join(out.stdout.split())
    assert "--results RESULTS the results page to write" in help_text
    assert "--img IMG folder for the plots" in help_text
    page = (BENCHMARKS.parent / "docs" / "benchmarks.md").read_text()
    assert "--results" in page
    assert "--img" in page
