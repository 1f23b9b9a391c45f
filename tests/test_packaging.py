"""What pip and PyPI show about the package is backed: the licence travels in the wheel, the
Pythons claimed are the ones CI runs the suite on, no system or address is claimed unbacked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def classifiers(prefix: str) -> list[str]:
    return re.findall(rf'^\s*"{re.escape(prefix)}(.+)",$', PYPROJECT, re.MULTILINE)


@pytest.mark.timeout(120)
def test_the_wheel_carries_the_licence(tmp_path: Path) -> None:
    """Built as a user's pip builds it (hatchling; no network: the test extra has it)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=110,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("procthrottle-*.whl")
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert "Copyright (c) 2026 procthrottle developers" in licence
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        inside = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", n)]
        assert inside, names
        assert archive.read(inside[0]).decode() == licence
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert b"\nLicense-Expression: MIT\n" in metadata
    assert b"\nLicense-File: LICENSE\n" in metadata


def test_ci_runs_the_suite_on_exactly_the_claimed_pythons() -> None:
    claimed = classifiers("Programming Language :: Python :: 3.")
    assert claimed == ["10", "11", "12", "13"]
    assert re.search(r'^requires-python = ">=3\.10"$', PYPROJECT, re.MULTILINE)
    out = subprocess.run([str(ROOT / ".ci" / "run"), "--list"], capture_output=True,
                         text=True, timeout=60, check=True)
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert list(found) == [f"3.{minor}" for minor in claimed]
    for version, python in found.items():  # an interpreter that is that version, or MISSING
        if python != "MISSING":
            check = subprocess.run(
                [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30, check=True,
            )
            assert check.stdout.strip() == version


def test_only_linux_is_claimed() -> None:
    """Nothing runs on macOS here, so it is not claimed (docs/faq.md says what is known)."""
    assert classifiers("Operating System :: ") == ["POSIX :: Linux"]


def test_no_project_url_points_to_an_unconfirmed_place() -> None:
    """No repository or rendered documentation site is confirmed to exist: no URLs at all
    (the Documentation link pointed at raw Markdown, the others at a guessed repository)."""
    assert "[project.urls]" not in PYPROJECT
    assert "https://" not in PYPROJECT.split("[project.optional-dependencies]")[0]


def test_ci_says_loudly_when_a_claimed_python_is_missing(tmp_path: Path) -> None:
    """A claimed version with no interpreter fails the run, and says so (here Python 3.99, in
    a copy of .ci/run beside a pyproject.toml that claims only it: nothing else runs)."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nclassifiers = [\n    "Programming Language :: Python :: 3.99",\n]\n'
    )
    out = subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "!! Python 3.99 is claimed by pyproject.toml but NOT FOUND" in out.stdout
    assert "MISSING: 3.99 (claimed, not run)" in out.stdout
    allowed = subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PROCTHROTTLE_CI_ALLOW_MISSING": "1"})
    assert allowed.returncode == 0
    assert "NOT FOUND" in allowed.stdout
