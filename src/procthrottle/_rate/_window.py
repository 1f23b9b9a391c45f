"""A reservation under the main rate (GCRA) and window quotas, as one compare-and-swap.

The main rate keeps one theoretical arrival time (TAT) ``T`` with emission interval ``I``
and burst ``b``: ``n`` units may go at ``max(now, T + (n - b) * I)``, and then
``T = max(T, slot) + n * I``. A window quota "at most ``count`` in any ``period``" keeps
its last ``count`` admissions (slot, units so far): ``n`` more units may go once the newest
admission whose units, with the ones after it and the ``n``, would pass ``count`` is out of
the window, i.e. at least ``period`` ago. Slots never go below the newest admission's, so
waiters are served in the order they reserved and each ring stays in time order.

The update is given as ``[word, value, ...]`` lists (before, after) of every word it reads
a decision from or writes: the caller applies it with one ``semop`` that checks them all.
"""

from __future__ import annotations

from typing import Any

from ._layout import COUNT_MOD, ENTRY, MAX_TIME, WORD_BITS, WORD_MASK, WORDS, Layout, decode


def _put(before: list[int], after: list[int], word: int, old: int, new: int, size: int) -> None:
    """Append the ``size`` words at ``word`` holding ``old``, to hold ``new``."""
    for i in range(size):
        before += (word + i, (old >> (WORD_BITS * i)) & WORD_MASK)
        after += (word + i, (new >> (WORD_BITS * i)) & WORD_MASK)


def reserve(values: Any, layout: Layout, now: int, n: int) -> tuple[int, list[int], list[int]]:
    """``(slot, before, after)`` for ``n`` units requested at ``now``.

    ``values``: every value of the set (a list, or the ctypes buffer GETALL filled).
    """
    tat = decode(values, layout.tat)
    slot = tat + (n - layout.burst) * layout.interval
    if slot < now:
        slot = now
    found = []
    for quota in layout.windows:
        count, ring = quota.count, quota.ring
        position = values[quota.index]
        units = values[quota.units] | values[quota.units + 1] << WORD_BITS
        newest = decode(values, ring + ENTRY * ((position - 1) % count))
        if newest > slot:
            slot = newest
        # Entry m (1: newest) is out of the window once the units after it, plus n, would
        # pass count: the largest m whose later units leave room for n (binary search; the
        # units after entry m grow with m).
        room = count - n
        low, high = 1, count
        while low < high:
            middle = (low + high + 1) // 2
            at = ring + ENTRY * ((position - middle) % count) + WORDS
            if (units - (values[at] | values[at + 1] << WORD_BITS)) % COUNT_MOD <= room:
                low = middle
            else:
                high = middle - 1
        oldest = decode(values, ring + ENTRY * ((position - low) % count))
        if oldest and oldest + quota.period + 1 > slot:  # 0: never written, no admission
            slot = oldest + quota.period + 1
        found.append((quota, position, units))
    new_tat = (tat if tat > slot else slot) + n * layout.interval
    if new_tat >= MAX_TIME:
        raise OverflowError("the rate limiter's queue reaches too far into the future")
    before: list[int] = []
    after_: list[int] = []
    _put(before, after_, layout.tat, tat, new_tat, WORDS)
    for quota, position, units in found:
        total = (units + n) % COUNT_MOD
        entry = quota.ring + ENTRY * position
        _put(before, after_, quota.index, position, (position + 1) % quota.count, 1)
        _put(before, after_, quota.units, units, total, 2)
        _put(before, after_, entry, decode(values, entry), slot, WORDS)
        old_units = values[entry + WORDS] | values[entry + WORDS + 1] << WORD_BITS
        _put(before, after_, entry + WORDS, old_units, total, 2)
    return slot, before, after_
