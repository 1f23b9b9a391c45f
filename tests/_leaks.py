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
