"""Adapters between the command line and the kernels: open, describe, list and unlink names.

Every use of the kernels' private modules by the CLI is in this file, so a change in the kernel
layer has one place to be met here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .._exceptions import ProcThrottleError
from .._kernel._semaphore import ProcessSemaphore
from .._kernel._validate import MAX_LIMIT
from ._errors import EXIT_FAILED, EXIT_USAGE, CliError


@dataclass(frozen=True)
class NamedInfo:
    """What the OS tells about one named semaphore."""

    name: str | None  # None: the kernel does not record the name (hashed into its key)
    crash_safe: bool
    limit: int
    free: int
    processes_attached: int | None = None  # None: the kernel does not tell
    holders: tuple[int, ...] | None = None  # pids holding a permit; None: the OS does not tell
    key: str | None = None  # the OS object, when the name is not known

    @property
    def held(self) -> int:
        return self.limit - self.free

    def as_dict(self) -> dict[str, Any]:
        info = asdict(self)
        info["held"] = self.held
        info["holders"] = None if self.holders is None else list(self.holders)
        return {k: v for k, v in info.items() if v is not None or k in ("name", "holders")}


class Limiter(Protocol):
    """What ``run`` needs of a rate limiter (``procthrottle.RateLimiter``'s sync interface)."""

    def acquire(self, n: int = 1, *, block: bool = True, timeout: float | None = None) -> bool:
        """Wait for a turn; False when none came in time."""

    def close(self) -> None:
        """Drop this handle."""


def open_semaphore(name: str, limit: int | None, *, crash_safe: bool) -> ProcessSemaphore:
    """Open (``limit`` None) or open-or-create NAME; errors become one-line ``CliError``."""
    kind = "" if crash_safe else " (--no-crash-safe)"
    if limit is not None and crash_safe and limit > MAX_LIMIT:
        raise CliError(
            f"--limit {limit} is too large for a crash-safe semaphore (at most {MAX_LIMIT}); "
            "--no-crash-safe allows up to 2147483647",
            EXIT_USAGE,
        )
    try:
        if limit is None:
            return _open_existing(name, crash_safe=crash_safe)
        return ProcessSemaphore(limit, name=name, crash_safe=crash_safe)
    except FileNotFoundError:
        raise CliError(
            f"no semaphore named {name!r}{kind} on this host; give --limit K to create it",
            EXIT_USAGE,
        ) from None
    except (ValueError, TypeError, FileExistsError) as exc:  # another limit or kind, ...
        raise CliError(str(exc), EXIT_USAGE) from None
    except PermissionError as exc:
        raise CliError(f"cannot open semaphore {name!r}: {exc}", EXIT_FAILED) from None
    except (OSError, ProcThrottleError) as exc:
        raise CliError(f"cannot open semaphore {name!r}: {exc}", EXIT_FAILED) from None


def _open_existing(name: str, *, crash_safe: bool) -> ProcessSemaphore:
    """``ProcessSemaphore.open`` (the kernel layer's); until it exists, look the limit up."""
    opener = getattr(ProcessSemaphore, "open", None)
    if opener is not None:
        sem: ProcessSemaphore = opener(name, crash_safe=crash_safe)
        return sem
    for info in describe(name):  # pragma: no cover - replaced by ProcessSemaphore.open
        if info.crash_safe == crash_safe:
            return ProcessSemaphore(info.limit, name=name, crash_safe=crash_safe)
    raise FileNotFoundError(name)  # pragma: no cover


def rate_limiter(name: str, rate: str) -> Limiter:
    """The host-wide rate limiter NAME admitting ``rate`` (``"10/s"``) for ``run --rate``."""
    raise CliError(
        f"--rate {rate} is not available yet in procthrottle {_version()}: "
        "run without --rate, or upgrade procthrottle",
        EXIT_USAGE,
    )


def _version() -> str:
    from ._parser import version

    return version()


def describe(name: str) -> list[NamedInfo]:
    """NAME under each kernel where it exists (normally one: one name is one semaphore)."""
    if sys.platform == "win32":  # pragma: no cover - no named semaphores on Windows
        return []
    from .._kernel import _posix, _sysv

    found: list[NamedInfo] = []
    sysv = _sysv.find_named(name)
    if sysv is not None:
        _, semid, limit = sysv
        try:
            free = _getval(semid, _sysv.PERMITS)
            attached = _getval(semid, _sysv.ATTACH)
        except OSError:
            pass  # removed meanwhile
        else:
            found.append(NamedInfo(name, True, limit, free, attached))
    posix = _posix.find_named(name)
    if posix is not None:
        limit, free = posix
        found.append(NamedInfo(name, False, limit, free))
    return found


def list_named() -> list[NamedInfo]:
    """This user's named semaphores, every kind.

    The kernel layer's listing function replaces this body once it exists. Until then the
    names cannot be recovered (the kernels store only a hash of each name), so the entries
    carry the OS object's key instead.
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return []
    return _list_sysv() + _list_posix()


def _list_sysv() -> list[NamedInfo]:
    from .._kernel import _sysv

    try:
        lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    except OSError:  # pragma: no cover - no System V IPC
        return []
    found = []
    for line in lines:
        key, semid, _, nsems, uid = (int(field) for field in line.split()[:5])
        if uid != os.getuid() or nsems != 5:
            continue
        try:
            hi, lo, limit = (_getval(semid, i) for i in (_sysv.TAG_HI, _sysv.TAG_LO, _sysv.LIMIT))
            if (hi, lo) == _sysv.ANONYMOUS_TAG:
                continue
            free, attached = _getval(semid, _sysv.PERMITS), _getval(semid, _sysv.ATTACH)
        except OSError:
            continue  # removed meanwhile, or not ours
        found.append(NamedInfo(None, True, limit, free, attached, key=f"sysv:{key:#010x}"))
    return found


def _list_posix() -> list[NamedInfo]:
    from .._kernel import _posix

    found = []
    for path in sorted(Path("/dev/shm").glob("sem.pt-*.l")):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            os_name = "/" + path.name[len("sem."):-len(".l")]
            limit = _posix._open(os_name + ".l", 1)._get_value()
            free = _posix._open(os_name, limit)._get_value()
        except OSError:
            continue
        found.append(NamedInfo(None, False, limit, free, key=f"posix:{os_name}"))
    return found


def unlink(name: str) -> bool:
    """Remove NAME under every kernel; False if it existed under none."""
    if sys.platform == "win32":  # pragma: no cover
        return False
    from .._kernel import _posix, _sysv

    removed = [_sysv.unlink_named(name), _posix.unlink_named(name)]  # both, no short cut
    return any(removed)


def _getval(semid: int, num: int) -> int:
    from .._kernel import _libc

    return _libc.getval(semid, num)
