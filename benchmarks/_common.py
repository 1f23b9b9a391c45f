"""Timing helpers: best of several repeats, ratios against a baseline measured in the same run."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any


def per_call(loop: Callable[[int], None], n: int, repeats: int = 5) -> float:
    """Best seconds per iteration of ``loop(n)`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loop(n)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def row(name: str, ours: float, base: float, unit: str, target: str) -> str:
    ratio = ours / base
    return f"| {name} | {ours:.3g} {unit} | {base:.3g} {unit} | {ratio:.2f}x | {target} |"


HEADER = "| measure | procthrottle | baseline | ratio | target |\n|---|---|---|---|---|"


def handoff_latency(sem: Any, child: Callable[..., None], trials: int, settle: float) -> float:
    """Median seconds from a release in this process to the acquire it wakes in ``child``."""
    return statistics.median(handoff_latencies(sem, child, trials, settle))


def handoff_latencies(
    sem: Any, child: Callable[..., None], trials: int, settle: float
) -> list[float]:
    """Seconds from a release in this process to the acquire it wakes in ``child``, sorted.

    Each trial: we hold the permit, ``child(sem, (go, ready, done), stamps, trials)`` starts
    waiting for it, we wait ``settle`` seconds so it is surely blocked, stamp and release;
    the child stamps when it gets the permit (CLOCK_MONOTONIC is shared by all processes).
    """
    ctx = multiprocessing.get_context("fork")
    go, ready, done = events = ctx.Event(), ctx.Event(), ctx.Event()
    stamps = ctx.Array("d", trials, lock=False)
    released = []
    process = ctx.Process(target=child, args=(sem, events, stamps, trials))
    process.start()
    for _ in range(trials):
        sem.acquire()
        go.set()
        ready.wait()
        ready.clear()
        time.sleep(settle)
        released.append(time.monotonic())
        sem.release()
        done.wait()
        done.clear()
    process.join()
    return sorted(s - r for s, r in zip(stamps, released, strict=True))
