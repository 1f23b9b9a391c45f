"""Where a rate limiter's configuration and state lie in its System V set, word by word.

Semaphore values are 15-bit counters, so a 60-bit time takes four of them (`WORDS`).

    header   MAGIC, ATTACH, TAG_HI, TAG_LO, BURST, NRATES (1 + the number of window quotas)
    config   the main rate's emission interval (ns, 4 words); per quota: its count (1 word)
             and its period (ns, 4 words)
    state    the main rate's theoretical arrival time (TAT, 4 words); per quota: the ring
             position of the next entry (1 word), the units admitted so far modulo 2**30
             (2 words), and a ring of `count` entries, one per admission: its slot (4 words)
             and the units admitted up to and including it, modulo 2**30 (2 words)

The main rate is a GCRA with its burst; each window quota ("at most `count` in any `period`")
keeps the last `count` admissions, which is what it takes to know when the oldest of them
leaves the window.
"""

from __future__ import annotations

from collections.abc import Sequence

MAGIC, ATTACH, TAG_HI, TAG_LO, BURST, NRATES = range(6)
HEADER = 6
#: Marks a set as a procthrottle rate limiter (layout version 2: window quotas).
MAGIC_VALUE = 0x5232
WORD_BITS = 15
WORD_MASK = (1 << WORD_BITS) - 1
WORDS = 4  # 60 bits per time value
MAX_TIME = 1 << (WORD_BITS * WORDS)
COUNT_MOD = 1 << 30  # units admitted, kept in two words
ENTRY = WORDS + 2
MAX_QUOTAS = 7
#: The largest count of a window quota (one semaphore value).
MAX_COUNT = WORD_MASK


def encode(value: int) -> list[int]:
    return [(value >> (WORD_BITS * i)) & WORD_MASK for i in range(WORDS)]


def decode(words: Sequence[int], at: int = 0) -> int:
    return words[at] | words[at + 1] << 15 | words[at + 2] << 30 | words[at + 3] << 45


class Quota:
    """Where one window quota's state lies: ring position, units so far, ring of entries."""

    __slots__ = ("count", "index", "period", "ring", "units")

    def __init__(self, count: int, period: int, base: int) -> None:
        self.count, self.period = count, period
        self.index = base  # the ring position of the next entry
        self.units = base + 1  # units admitted so far, modulo COUNT_MOD (2 words)
        self.ring = base + 3  # entry k: slot at ring + ENTRY * k, units at ring + ENTRY * k + 4

    @property
    def size(self) -> int:
        return 3 + ENTRY * self.count


class Layout:
    """A limiter's configuration and where each part of its state lies in the set."""

    __slots__ = ("burst", "interval", "nsems", "quotas", "tat", "windows")

    def __init__(self, burst: int, interval: int, quotas: Sequence[tuple[int, int]]) -> None:
        self.burst, self.interval, self.quotas = burst, interval, tuple(quotas)
        self.tat = HEADER + WORDS + (WORDS + 1) * len(self.quotas)
        base = self.tat + WORDS
        self.windows: list[Quota] = []
        for count, period in self.quotas:
            quota = Quota(count, period, base)
            self.windows.append(quota)
            base += quota.size
        self.nsems = base

    @property
    def key(self) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        """What two limiters must share to be the same: burst, interval, quotas."""
        return self.burst, self.interval, self.quotas

    def config_words(self) -> list[int]:
        """The header's configuration words after NRATES, in order."""
        words = encode(self.interval)
        for count, period in self.quotas:
            words += [count, *encode(period)]
        return words

    def pairs(self) -> list[tuple[float, float]]:
        """``(rate, per)`` of the main rate (per second) and of each quota (its own period)."""
        return [(1e9 / self.interval, 1.0)] + [
            (count, period / 1e9) for count, period in self.quotas
        ]


def _number(value: float) -> str:
    """A number with as many digits as it takes (10, 2.5, 10.0000001)."""
    return f"{value:.10g}"


def differences(theirs: Layout, ours: Layout) -> list[str]:
    """What differs between two configurations, each item naming both values."""
    found = []
    if theirs.interval != ours.interval:
        found.append(
            f"the main rate is {_number(1e9 / theirs.interval)} per second (one every "
            f"{theirs.interval:,} ns) there, {_number(1e9 / ours.interval)} per second (one "
            f"every {ours.interval:,} ns) here"
        )
    if theirs.burst != ours.burst:
        found.append(f"burst is {theirs.burst} there, {ours.burst} here")
    if theirs.quotas != ours.quotas:

        def listed(layout: Layout) -> str:
            quotas = [f"{count} per {_number(period / 1e9)} s" for count, period in layout.quotas]
            return ", ".join(quotas) if quotas else "none"

        found.append(f"the window quotas (extra) are {listed(theirs)} there, {listed(ours)} here")
    return found


def max_set_size() -> int | None:
    """How many semaphores one set may have here (SEMMSL), if the system tells."""
    try:
        with open("/proc/sys/kernel/sem") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
