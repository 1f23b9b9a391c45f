"""Helpers shared by tests: observed overlap of recorded intervals, kernel object counts."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Largest number of intervals open at one instant (an end before a start at ties)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def read_intervals(path: Path) -> list[tuple[float, float]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(float(r[-2]), float(r[-1])) for r in rows]


#: Every name unique_name() handed out in this process: the leak check looks for these.
ISSUED_NAMES: set[str] = set()


def sysv_sets() -> set[int]:
    """Ids of the System V semaphore sets on the host (ours and everybody else's)."""
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def unique_name(prefix: str = "pt-test") -> str:
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    ISSUED_NAMES.add(name)
    return name


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def python_env() -> dict[str, str]:
    """Environment for a `python -c` child that must import procthrottle."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
