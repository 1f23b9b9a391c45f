"""Helpers shared by tests: observed overlap of recorded intervals, kernel object counts."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
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
    """Ids of the procthrottle System V sets on the host: semaphores and rate limiters.

    Other programs' sets come and go while the suite runs, so only sets laid out as ours
    (a semaphore's nonzero limit, a rate limiter's finished header) are counted.
    """
    from procthrottle._kernel import _libc, _naming
    from procthrottle._rate import _store

    found = set()
    for info in _libc.listing():
        try:
            if info.nsems in _naming.SIZES:
                layout = _naming._layout(info.semid)
                ours = layout is not None and layout[1] > 0
            else:
                header = _store.read_header(info.semid)
                ours = header is not None and not header.half_made
        except OSError:  # removed meanwhile, or another user's and unreadable
            continue
        if ours:
            found.add(info.semid)
    return found


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


async def lag_while(calls: Callable[[], Awaitable[object]]) -> float:
    """Run ``calls()`` next to a 5 ms ticker; the longest gap between ticks (loop lag)."""
    import anyio

    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.monotonic()
        while True:
            await anyio.sleep(0.005)
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await calls()
        tg.cancel_scope.cancel()
    return worst
