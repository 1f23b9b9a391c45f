"""What this test run created and did not remove: System V sets and POSIX semaphore files.

The suite may share its host with anything (CI runners, a developer's other programs, another
procthrottle user), so it counts only objects it can tell are its own:

* named objects: those of the names `helpers.unique_name` handed out in this run;
* anonymous System V sets: this user's five-semaphore procthrottle sets (anonymous tag) that
  appeared during the run and whose last attach or detach was made by this process or by a
  process that no longer exists (a live stranger's set is in use, not leaked by us);
* anonymous POSIX semaphores: ``/dev/shm/sem.pt-anon-<pid>-*`` files of this user that appeared
  during the run, whose creator is this process or dead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ISSUED_NAMES, pid_alive, sysv_sets

SHM = Path("/dev/shm")


@dataclass
class Snapshot:
    sets: set[int] = field(default_factory=set)
    files: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        files = {p.name for p in SHM.glob("sem.pt-anon-*")} if SHM.is_dir() else set()
        return cls(sysv_sets(), files)


def leaked_since(before: Snapshot) -> list[str]:
    from procthrottle._kernel import _libc, _naming

    now = Snapshot.take()
    found: list[str] = []
    for name in sorted(ISSUED_NAMES):
        named = _naming.find_named(name)
        if named is not None:
            found.append(f"System V set of name {name!r}: semid {named[1]}")
    me = os.getpid()
    mine = {info.semid for info in _libc.own_sets()}
    for semid in sorted(now.sets - before.sets):
        if semid not in mine:
            continue
        try:
            layout = _naming._layout(semid)
            if layout is None or layout[0] != _naming.ANONYMOUS_TAG:
                continue
            last = _libc.getctl(semid, _naming.ATTACH, _libc.GETPID)
            if last != me and pid_alive(last):
                continue  # a live process uses it: not ours
            size = _naming.size(semid) or _naming.NSEMS
            values = [_libc.getval(semid, i) for i in range(size)]
        except OSError:
            continue  # removed meanwhile, or not readable: not ours
        found.append(f"anonymous System V set {semid}: value/attached/limit/tag={values}")
    for file in sorted(now.files - before.files):
        pid_text = file[len("sem.pt-anon-") :].split("-", 1)[0]
        path = SHM / file
        try:
            owner = path.stat().st_uid
        except OSError:
            continue
        if owner == os.geteuid() and pid_text.isdigit():
            pid = int(pid_text)
            if pid == me or not pid_alive(pid):
                found.append(f"anonymous POSIX semaphore {path}")
    return found


def sets_left_since(before: set[int], *, grace: float = 2.0) -> set[int]:
    """Anonymous procthrottle sets (semaphores and rate limiters) made since `before` that are
    left behind: nobody is attached to them, or only this process is.

    The host may be shared with other procthrottle programs, whose anonymous sets come and go:
    a set that a live process is attached to is in use, not leaked. A set whose last user is
    removing it is briefly unattached, so a candidate counts only if it is still there, still
    unattached, after `grace` seconds.
    """
    import time

    deadline = time.monotonic() + grace
    candidates = {semid for semid in sysv_sets() - before if _unused(semid)}
    while candidates and time.monotonic() < deadline:
        time.sleep(0.05)
        candidates = {semid for semid in candidates if _unused(semid)}
    return candidates


def _unused(semid: int) -> bool:
    """Anonymous, and attached by nobody but this process (False if it is gone or not ours)."""
    from procthrottle._kernel import _libc, _naming
    from procthrottle._rate import _store

    try:
        layout = _naming._layout(semid)
        if layout is not None:
            anonymous, attach = layout[0] == _naming.ANONYMOUS_TAG, _naming.ATTACH
        else:
            header = _store.read_header(semid)
            if header is None:
                return False
            anonymous, attach = header.tag == _store.ANONYMOUS_TAG, _store.ATTACH
        if not anonymous:
            return False  # named objects are the tests' own, by unique name (leaked_since)
        attached = _libc.getval(semid, attach)
        last = _libc.getctl(semid, attach, _libc.GETPID)
    except OSError:
        return False  # removed meanwhile, or not readable: not ours
    return attached == 0 or (attached == 1 and last == os.getpid())


def made_since(before: set[int], pid: int | None = None) -> set[int]:
    """procthrottle sets (any kind, named or not) that appeared since `before` and that process
    `pid` (default: this one) set up: the process that ran a set's initialising ``semop`` is
    the last to have touched a word nothing else changes (a semaphore's tag, a rate limiter's
    magic). Other programs' sets, which come and go meanwhile, are not counted."""
    from procthrottle._kernel import _libc, _naming
    from procthrottle._rate import _layout as _rate_layout

    pid = os.getpid() if pid is None else pid
    found = set()
    for semid in sysv_sets() - before:
        try:
            word = _naming.TAG_HI if _naming._layout(semid) is not None else _rate_layout.MAGIC
            if _libc.getctl(semid, word, _libc.GETPID) == pid:
                found.add(semid)
        except OSError:
            continue  # removed meanwhile
    return found
