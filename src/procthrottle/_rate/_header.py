"""A rate set's header: what it says about itself, written once, read by every opener.

The header (magic value, attach counter, owner tag, burst, number of rates) and the
configuration that follows it (`_layout`) are written by one ``semop`` that applies only
while the magic word is still 0, so a set is either half-made (all zeros) or complete.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib

from .._kernel import _libc
from ._layout import (
    ATTACH,
    BURST,
    HEADER,
    MAGIC,
    MAGIC_VALUE,
    MAX_QUOTAS,
    NRATES,
    TAG_HI,
    TAG_LO,
    WORD_MASK,
    WORDS,
    Layout,
    decode,
)

ANONYMOUS_TAG = (0, 0)


def initial(tag: tuple[int, int], layout: Layout) -> list[int]:
    values = [MAGIC_VALUE, 0, *tag, layout.burst, 1 + len(layout.quotas)]
    values += layout.config_words()
    return values + [0] * (layout.nsems - len(values))


def name_tag(name: str) -> tuple[int, int]:
    digest = hashlib.blake2b(name.encode(), digest_size=4, person=b"procthrottle.rtg").digest()
    value = int.from_bytes(digest, "big")
    return ((value >> 15) & WORD_MASK) or 1, value & WORD_MASK


def init_ops(
    tag: tuple[int, int], layout: Layout, *, attach: bool = False
) -> ctypes.Array[_libc.SemBuf]:
    """Write a set's header in one ``semop``, only while its magic word is still 0.

    With ``attach``, the same ``semop`` attaches this process: a new anonymous set is never
    seen finished but unattached (which the sweep of another process would remove).
    """
    triples = [(MAGIC, 0, _libc.IPC_NOWAIT)]
    for word, value in enumerate(initial(tag, layout)):
        if value and word != ATTACH:
            triples.append((word, value, 0))
    if attach:
        triples.append((ATTACH, 1, _libc.SEM_UNDO))
    return _libc.ops(*triples)


class Header:
    """What a set says about itself: owner tag and configuration (none: half-made)."""

    __slots__ = ("layout", "tag")

    def __init__(self, tag: tuple[int, int], layout: Layout | None) -> None:
        self.tag, self.layout = tag, layout

    @property
    def half_made(self) -> bool:
        """Its creator made it but nobody has written its header yet."""
        return self.layout is None

    @property
    def burst(self) -> int:
        return 0 if self.layout is None else self.layout.burst

    def pairs(self) -> list[tuple[float, float]]:
        """``(rate, per)`` of the main rate and of each window quota (none if half-made)."""
        return [] if self.layout is None else self.layout.pairs()


HALF_MADE = Header(ANONYMOUS_TAG, None)


def _has_size(semid: int, size: int) -> bool:
    """Whether the set has exactly ``size`` semaphores."""
    try:
        _libc.getval(semid, size - 1)
    except OSError as exc:
        if exc.errno == errno.EINVAL and _libc.getval(semid, 0) >= 0:
            return False  # smaller (EINVAL for the set itself propagates from getval(0))
        raise
    try:
        _libc.getval(semid, size)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return True
    return False


def read_header(semid: int) -> Header | None:
    """The header of a rate set (`HALF_MADE` if it has none yet); None for any other set.

    Raises OSError (EINVAL, EIDRM) if the set is removed meanwhile.
    """
    magic = _libc.getval(semid, MAGIC)
    if magic == 0:  # the header is written by one semop: all of it, or none yet
        return HALF_MADE if _libc.getval(semid, NRATES) == 0 else None
    if magic != MAGIC_VALUE:
        return None
    count = _libc.getval(semid, NRATES)
    if not 1 <= count <= 1 + MAX_QUOTAS:
        return None
    config_end = HEADER + WORDS + (WORDS + 1) * (count - 1)
    try:  # one value at a time: GETALL needs a buffer of the set's size, not known yet
        words = [_libc.getval(semid, i) for i in range(config_end)]
    except OSError as exc:
        if exc.errno == errno.EINVAL and _libc.getval(semid, 0) >= 0:
            return None  # too small for its own header: not ours
        raise
    quotas = []
    for at in range(HEADER + WORDS, config_end, WORDS + 1):
        quotas.append((words[at], decode(words, at + 1)))
    interval = decode(words, HEADER)
    if not interval or any(not count or not period for count, period in quotas):
        return None
    layout = Layout(words[BURST], interval, quotas)
    if not _has_size(semid, layout.nsems):
        return None
    return Header((words[TAG_HI], words[TAG_LO]), layout)


def inspect(semid: int) -> Header | None:
    """The header of a finished procthrottle rate set; None for any other set or none."""
    try:
        header = read_header(semid)
    except OSError:
        return None
    return None if header is None or header.half_made else header
