"""Timing helpers: best of several repeats, ratios against a baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable


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
