"""The shared state of a rate limiter: one System V semaphore set, updated by compare-and-swap.

The set holds a header (a magic value, an attach counter, the owner tag of a named set, the
burst and the number of rates), the configuration, the main rate's theoretical arrival time
(TAT) and each window quota's ring of recent admissions, as `_layout` lays them out.

There is no lock. An update is one ``semop`` call with, for every word it changes, the three
operations "subtract the value I read", "wait for zero" and "add the new value", all with
``IPC_NOWAIT``: the kernel applies them atomically and only if every word still holds what
this process read, a multi-word compare-and-swap. A process killed at any instant therefore
leaves either the old state or the new one, never a mix, and never holds anything the others
wait for. The attach counter moves with ``SEM_UNDO`` (as in the semaphore kernel), so it counts
the live processes using the set; the last one to close an anonymous set removes it.

A named set is found and made exactly as a named semaphore (``_kernel._naming.claim``): one
key per name (`_naming.rate_key`, a key space of its own), ``semget(IPC_CREAT | IPC_EXCL)``
making a set of zeros, then one ``semop`` that writes the whole header only while the magic
word is still 0, which any opener may perform. Nobody waits for a creator, a stalled or dead
creator's set is finished by the next opener, and an existing set is used only if its owner
checks pass (`_kernel._owner`).
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import sysv_ipc

from .._exceptions import SemaphoreClosedError
from .._kernel import _libc, _naming, _registry
from ._header import ANONYMOUS_TAG as ANONYMOUS_TAG
from ._header import HALF_MADE as HALF_MADE
from ._header import Header as Header
from ._header import _has_size
from ._header import init_ops as init_ops
from ._header import initial as initial
from ._header import inspect as inspect
from ._header import name_tag as name_tag
from ._header import read_header as read_header
from ._layout import ATTACH as ATTACH
from ._layout import (
    MAX_TIME,
    WORDS,
    Layout,
)

GETALL = 6 if sys.platform == "darwin" else 13

_getall = _libc.libc["semctl"]
# semctl is variadic: argtypes name its fixed arguments only, and the array goes as a variadic
# extra (by address), which is how arm64 macOS wants a variadic argument passed.
_getall.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_getall.restype = ctypes.c_int
# The hot path: callers pass a ctypes pointer and size_t made once, which these argtypes take
# as they are (no per-call conversion).
_semop = semop = _libc.libc["semop"]
_semop.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_semop.restype = ctypes.c_int

_ATTACH = _libc.ops((ATTACH, 1, _libc.SEM_UNDO))
_DETACH = _libc.ops((ATTACH, -1, _libc.SEM_UNDO | _libc.IPC_NOWAIT))
IF_UNUSED = _libc.ops((ATTACH, 0, _libc.IPC_NOWAIT))


def lookup(key: int) -> int | None:
    """The set id at ``key`` if it exists and belongs to this user; None otherwise."""
    try:
        semid = _libc.lookup(key)
        if semid is None:
            return None
        owner = sysv_ipc.Semaphore(key)
        if owner.uid != os.geteuid() or owner.cuid != os.geteuid():
            return None  # another user's set, even if readable: never attach to it
    except (PermissionError, sysv_ipc.Error):
        return None
    return semid


class _Buffers:
    """One thread's buffers: the ``struct sembuf`` array of an update, the values read."""

    __slots__ = ("address", "after", "before", "ops", "values")

    def __init__(self, template: list[int], size: int) -> None:
        self.ops = array.array("h", template)
        self.address = ctypes.c_void_p(self.ops.buffer_info()[0])
        self.before = self.after = -1  # the values of a one-rate update in ops; -1: none
        self.values = (ctypes.c_ushort * size)()


class _PerThread(threading.local):
    """`_Buffers` per thread, reached with one thread-local lookup (each costs ~50 ns)."""

    def __init__(self, template: list[int], size: int) -> None:
        self.buffers = _Buffers(template, size)


class RateSet:
    """One process's handle on a rate set: read, compare-and-swap, attach, detach."""

    __slots__ = ("_local", "count", "count_ops", "key", "layout", "semid", "tat_base")

    def __init__(self, key: int, semid: int, layout: Layout) -> None:
        self.key, self.semid, self.layout = key, semid, layout
        self.count = 1  # the TATs `read`, `swap` and `cas1` handle: the main rate's
        self.tat_base = layout.tat
        # Per TAT word: (word, -old), (word, 0), (word, +new); old and new filled per update.
        template: list[int] = []
        for word in range(self.tat_base, self.tat_base + WORDS):
            for _ in range(3):
                template += [word, 0, _libc.IPC_NOWAIT]
        self.count_ops = ctypes.c_size_t(len(template) // 3)
        self._local = _PerThread(template, layout.nsems)

    def read(self) -> list[int]:
        """The main rate's TAT now (one atomic GETALL)."""
        buffer = self.read_values()
        base = self.tat_base
        return [
            buffer[base] | buffer[base + 1] << 15 | buffer[base + 2] << 30 | buffer[base + 3] << 45
        ]

    def read_values(self) -> ctypes.Array[ctypes.c_ushort]:
        """Every value of the set now (one atomic GETALL), in this thread's buffer."""
        buffer = self._local.buffers.values
        if _getall(self.semid, 0, GETALL, buffer) < 0:
            self._fail()
        return buffer

    def swap_pairs(self, old: Sequence[int], new: Sequence[int]) -> bool:
        """Set the words ``old = [word, value, ...]`` to the values of ``new`` (same words, in
        the same order) if they all still hold their ``old`` values: one atomic ``semop``."""
        ops = array.array("h")
        for i in range(0, len(old), 2):
            word, before, after = old[i], old[i + 1], new[i + 1]
            ops.extend((word, -before, _libc.IPC_NOWAIT, word, 0, _libc.IPC_NOWAIT))
            ops.extend((word, after, _libc.IPC_NOWAIT))
        address = ctypes.c_void_p(ops.buffer_info()[0])
        if _semop(self.semid, address, ctypes.c_size_t(len(ops) // 3)) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EAGAIN or code == errno.EINTR:
            return False
        self._fail(code)

    def swap(self, old: Sequence[int], new: Sequence[int]) -> bool:
        """Replace the TATs ``old`` by ``new`` if they still are ``old`` (atomically)."""
        local = self._local.buffers
        ops = local.ops
        local.before = local.after = -1  # the buffer no longer holds a cas1 update
        pos = 1
        for before, after in zip(old, new, strict=True):
            if after >= MAX_TIME or after < 0:
                raise OverflowError("the rate limiter's queue reaches too far into the future")
            ops[pos] = -(before & 0x7FFF)
            ops[pos + 6] = after & 0x7FFF
            ops[pos + 9] = -((before >> 15) & 0x7FFF)
            ops[pos + 15] = (after >> 15) & 0x7FFF
            ops[pos + 18] = -((before >> 30) & 0x7FFF)
            ops[pos + 24] = (after >> 30) & 0x7FFF
            ops[pos + 27] = -(before >> 45)
            ops[pos + 33] = after >> 45
            pos += 36
        if _semop(self.semid, local.address, self.count_ops) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EAGAIN or code == errno.EINTR:
            return False  # nothing applied; the caller reads again and retries
        self._fail(code)

    def cas1(self, before: int, after: int) -> bool:
        """`swap` for a set of one rate: the hot path.

        This thread's buffer still holds the operations of its previous update, and the high
        words of a time change rarely (every 33 ms and 1.07 s), so only the words that differ
        from that update are written.
        """
        if after >= MAX_TIME:
            raise OverflowError("the rate limiter's queue reaches too far into the future")
        local = self._local.buffers
        ops = local.ops
        ops[1] = -(before & 0x7FFF)
        ops[7] = after & 0x7FFF
        changed = (before ^ local.before) | (after ^ local.after)
        if changed >> 15:
            ops[10] = -((before >> 15) & 0x7FFF)
            ops[16] = (after >> 15) & 0x7FFF
            if changed >> 30:
                ops[19] = -((before >> 30) & 0x7FFF)
                ops[25] = (after >> 30) & 0x7FFF
                ops[28] = -(before >> 45)
                ops[34] = after >> 45
        local.before, local.after = before, after
        if semop(self.semid, local.address, self.count_ops) == 0:
            return True
        code = ctypes.get_errno()
        if code != errno.EAGAIN and code != errno.EINTR:
            self._fail(code)
        return False

    def _fail(self, code: int | None = None) -> NoReturn:
        code = ctypes.get_errno() if code is None else code
        if code in _libc.GONE:
            raise SemaphoreClosedError(
                "the rate limiter was unlinked from the host (or every process using an "
                "anonymous one closed it)"
            )
        raise OSError(code, os.strerror(code))

    def attach(self) -> None:
        try:
            _libc.semop(self.semid, _ATTACH)
        except OSError as exc:
            if exc.errno in _libc.GONE:
                raise SemaphoreClosedError(
                    "this rate limiter no longer exists: every process that used it closed it "
                    "or exited, or it was unlinked. Keep the creating process's RateLimiter "
                    "alive while others use it, or give it a name="
                ) from exc
            raise

    def remove(self) -> bool:
        return _libc.remove(self.semid)


def detach(semid: int, anonymous: bool) -> None:
    """Undo one attach; the last handle on the host removes an anonymous set."""
    try:
        _libc.semop(semid, _DETACH)
        if anonymous and _libc.semop(semid, IF_UNUSED):
            _libc.remove(semid)
    except OSError as exc:
        if exc.errno not in _libc.GONE:  # pragma: no cover - unexpected kernel error
            raise


def find_named(name: str) -> tuple[int, int, Header] | None:
    """``(key, semid, header)`` of this user's rate set of that name (maybe `HALF_MADE`)."""
    key = _naming.rate_key(name)
    semid = lookup(key)
    if semid is None:
        return None
    try:
        header = read_header(semid)
    except OSError:
        return None
    if header is None or not (header.half_made or header.tag == name_tag(name)):
        return None
    return key, semid, header


def open_or_create_named(name: str, layout: Layout, mode: int) -> tuple[RateSet, Header]:
    """The named set, created if need be, and its header (the rates it holds).

    Raises:
        NameConflictError: A semaphore has the name (before or, racing, after we made the
            set), or the key holds a set of another program or another rate limiter name.
        PermissionError: The set belongs to another user and ``mode`` does not share it.
        ValueError: A half-made set of another size (a creator with another number of rates).
    """
    what = f"rate limiter {name!r}"
    _naming.refuse_other_kind(name, _naming.RATE_LIMITER)
    key, tag, size = _naming.rate_key(name), name_tag(name), layout.nsems
    init = init_ops(tag, layout)

    finished = False  # this process's set-up semop made the set (whoever created it)

    def settle(semid: int, created: bool) -> Header | None:
        nonlocal finished
        header = HALF_MADE if created else read_header(semid)
        if header is not None and header.half_made and (created or _has_size(semid, size)):
            # ours, or a stalled or dead creator's of our size: a no-op if finished meanwhile
            finished = _libc.semop(semid, init)
            header = read_header(semid)
        return header

    def missing() -> Exception:  # pragma: no cover - claim always creates here
        return FileNotFoundError(what)

    semid, header, created = _naming.claim(key, what, mode, size, settle, missing)
    if header is None or not (header.half_made or header.tag == tag):
        holder = "a set of another program" if header is None else "another rate limiter name"
        raise _naming.foreign_key(what, key, holder)
    if header.half_made:
        raise ValueError(
            f"{what} is half-made by a creator with other window quotas (its creator "
            f"stopped or died before finishing it); create it with that creator's rates, or "
            f"remove it with `procthrottle unlink {name}`"
        )
    if created:
        other = _naming.kind_holding(name, exclude=_naming.RATE_LIMITER)
        if other is not None:  # a semaphore creator raced us: neither wins
            _libc.remove(semid)
            raise _naming.kind_conflict(name, _naming.RATE_LIMITER, other)
    if created or finished:  # listed by `procthrottle list`, even if its creator died
        _registry.add(name, _registry.RATE)
    # The header as read back, also for the creator: a creator stalled before its set-up semop
    # finds it made by another opener, maybe with other rates, which the caller compares.
    return RateSet(key, semid, layout), header


def unlink_named(name: str) -> bool:
    """Remove the named rate limiter from the host (half-made too); False if there was none."""
    found = find_named(name)
    _registry.discard(name, _registry.RATE)
    return found is not None and _libc.remove(found[1])
