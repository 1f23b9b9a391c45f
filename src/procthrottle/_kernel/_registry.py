"""An owner-only directory that remembers which names this user created.

System V keys and POSIX object names are hashes of the name, so the names cannot be read back
from the kernel; `procthrottle list` needs them. Each named semaphore or rate limiter a user
creates leaves an empty file ``<name>.<kind>`` (``sysv``, ``posix`` or ``rate``) in
``/dev/shm/procthrottle-<uid>`` (or the temp directory where there is no ``/dev/shm``);
`unlink` removes it. The directory is used only if this user owns it
and nobody else can write to it; otherwise the registry is silently off (listing shows less,
nothing else changes). The entries are hints: a lister checks that each object still exists.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

#: The file suffix of each kind: a semaphore's ``crash_safe`` flag, or ``RATE``.
RATE = "rate"
KINDS: dict[bool | str, str] = {True: "sysv", False: "posix", RATE: "rate"}


def directory(*, create: bool) -> Path | None:
    """This user's registry directory, or None if it is missing or not safely ours."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    path = base / f"procthrottle-{os.geteuid()}"
    if create:
        with contextlib.suppress(OSError):
            path.mkdir(mode=0o700)
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return path


def add(name: str, crash_safe: bool | str) -> None:
    """Remember that this user created ``name`` (a semaphore of that kernel, or `RATE`)."""
    path = directory(create=True)
    if path is None:
        return
    flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    with contextlib.suppress(OSError):
        os.close(os.open(path / f"{name}.{KINDS[crash_safe]}", flags, 0o600))


def discard(name: str, crash_safe: bool | str) -> None:
    path = directory(create=False)
    if path is not None:
        with contextlib.suppress(OSError):
            (path / f"{name}.{KINDS[crash_safe]}").unlink()


def entries() -> list[tuple[str, bool]]:
    """``(name, crash_safe)`` of every remembered semaphore name, sorted."""
    path = directory(create=False)
    if path is None:
        return []
    found = []
    for entry in path.iterdir():
        name, _, kind = entry.name.rpartition(".")
        if kind in ("sysv", "posix") and name:
            found.append((name, kind == "sysv"))
    return sorted(found)


def rate_names() -> list[str]:
    """Every remembered rate limiter name, sorted."""
    path = directory(create=False)
    if path is None:
        return []
    suffix = f".{RATE}"
    return sorted(
        e.name[: -len(suffix)]
        for e in path.iterdir()
        if e.name.endswith(suffix) and e.name != suffix
    )
