"""The generic cell rate algorithm (GCRA) over several rates at once, in integer nanoseconds.

Each rate keeps one theoretical arrival time (TAT). A request for ``n`` at ``now`` gets the
slot ``max(now, max_i(max(TAT_i, now) + (n - burst) * T_i))`` and moves every TAT to
``max(TAT_i, slot) + n * T_i``, where ``T_i = per_i / rate_i``. Since each TAT then stays at most
``burst * T_i`` ahead of its slot and grows by ``n * T_i`` per admission, the slots of any window
of ``W`` seconds hold at most ``burst + W / T_i`` weighted admissions, for every rate.
Slots never decrease in reservation order, so waiters are served in the order they reserved.
"""

from __future__ import annotations

from collections.abc import Sequence


def reserve(
    tats: Sequence[int], now: int, n: int, intervals: Sequence[int], burst: int
) -> tuple[int, list[int]]:
    """``(slot, new_tats)`` for ``n`` units requested at ``now``."""
    slot = now
    for tat, interval in zip(tats, intervals, strict=True):
        start = (tat if tat > now else now) + (n - burst) * interval
        if start > slot:
            slot = start
    return slot, [(tat if tat > slot else slot) + n * interval
                  for tat, interval in zip(tats, intervals, strict=True)]  # fmt: skip
