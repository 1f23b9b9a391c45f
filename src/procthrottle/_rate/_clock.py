"""The host's monotonic clock, also for a process in a Linux time namespace.

A rate limiter's shared state holds times (slots, theoretical arrival times) that every
process using it compares with its own clock, so all of them must read the same clock. A
process in a time namespace (``unshare --time``, some containers) reads CLOCK_MONOTONIC with
an offset, which ``/proc/self/timens_offsets`` gives; `now_ns` takes it off, so the state is
kept in the host's clock whatever namespace each process is in. Outside any namespace, or
where the file does not exist (other systems, older kernels), the offset is 0 and `now_ns` is
`time.monotonic_ns` itself.

A process that enters a new time namespace does so for its children only, so the offset is
read again in every forked child.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

_monotonic_ns = time.monotonic_ns


def _read_offset() -> int:
    """CLOCK_MONOTONIC's offset from the host's in this process's namespace, in ns."""
    try:
        with open("/proc/self/timens_offsets") as file:
            for line in file:
                fields = line.split()
                if len(fields) == 3 and fields[0] in ("monotonic", "1"):  # name, or clock id
                    return int(fields[1]) * 1_000_000_000 + int(fields[2])
    except (OSError, ValueError):
        pass
    return 0


def _host_clock(offset: int) -> Callable[[], int]:
    if not offset:
        return _monotonic_ns

    def host_ns() -> int:
        return _monotonic_ns() - offset

    return host_ns


_offset = _read_offset()
#: The host's CLOCK_MONOTONIC in ns (call it as ``_clock.now_ns()``: it is replaced after fork).
now_ns = _host_clock(_offset)


def offset_ns() -> int:
    """How far this process's CLOCK_MONOTONIC is ahead of the host's, in ns."""
    return _offset


def _after_fork_in_child() -> None:
    global _offset, now_ns
    _offset = _read_offset()
    now_ns = _host_clock(_offset)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
