"""ctypes access to the System V calls that ``sysv_ipc`` lacks.

``sysv_ipc`` makes sets of one semaphore and its PyPI wheels are built without ``semtimedop``
(a timed acquire blocks forever), so set creation with several semaphores, ``GETVAL`` on any of
them, multi-operation ``semop`` and the timed wait go straight to libc.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import sys
import time
from typing import NamedTuple

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
SEM_UNDO = 0x1000
if sys.platform == "darwin":  # pragma: no cover - constants of <sys/sem.h> differ
    GETNCNT, GETPID, GETVAL, SETALL = 3, 4, 5, 9
else:
    GETPID, GETVAL, GETNCNT, SETALL = 11, 12, 14, 17


class SemBuf(ctypes.Structure):
    _fields_ = (
        ("sem_num", ctypes.c_ushort),
        ("sem_op", ctypes.c_short),
        ("sem_flg", ctypes.c_short),
    )


class _TimeSpec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


# The C library the interpreter is linked with: dlopen(NULL) finds its symbols with no
# ctypes.util.find_library("c"), which runs `ldconfig -p` in a subprocess (about 18 ms at every
# import, so at every `procthrottle run`). Its calls release the GIL.
libc = ctypes.CDLL(None, use_errno=True)
_semget = libc.semget
_semget.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_semget.restype = ctypes.c_int
# semctl is variadic: one prototype per shape of call (libc["..."] makes a new function
# object each time), so that the fixed arguments are declared and the optional fourth is too.
# semctl is variadic: only its three fixed arguments are declared (arm64 macOS passes variadic
# arguments differently); SETALL's fourth, the values, is passed as a ctypes array (a pointer).
_semctl = libc["semctl"]
_semctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_semctl.restype = ctypes.c_int
_semop = libc.semop
_semop.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_semop.restype = ctypes.c_int
_semtimedop = getattr(libc, "semtimedop", None)  # Linux only; macOS polls below
if _semtimedop is not None:
    _semtimedop.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    _semtimedop.restype = ctypes.c_int

#: errno values meaning "this set no longer exists".
GONE = frozenset({errno.EIDRM, errno.EINVAL})


def _oserror() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def _semget_error() -> OSError:
    """The error of a failed ``semget``; running out of System V semaphores says so."""
    code = ctypes.get_errno()
    if code != errno.ENOSPC:
        return OSError(code, os.strerror(code))
    return OSError(code, out_of_semaphores())


def out_of_semaphores() -> str:
    """What ran out (``kernel.sem``'s SEMMNI sets or SEMMNS semaphores), and the ways out."""
    limits = ""
    try:
        semmsl, semmns, _, semmni = _read("/proc/sys/kernel/sem").split()[:4]
        in_use = listing()
        limits = (
            f" (kernel.sem allows {semmni} sets and {semmns} semaphores in all; "
            f"{len(in_use)} sets with {sum(i.nsems for i in in_use)} semaphores exist now)"
        )
    except (OSError, ValueError):  # pragma: no cover - not Linux
        semmsl = "250"
    return (
        f"no System V semaphores left on this host{limits}. Remove the ones no longer used "
        "(`procthrottle list` shows your names, `procthrottle unlink NAME` removes one; "
        "`ipcs -s` lists every set, `ipcrm -s ID` removes one), or raise the host's limit, "
        f'e.g. `sysctl -w kernel.sem="{semmsl} 1024000 500 32000"` (SEMMSL SEMMNS SEMOPM '
        "SEMMNI; root, in /etc/sysctl.conf to keep it)"
    )


def ops(*triples: tuple[int, int, int]) -> ctypes.Array[SemBuf]:
    """Build a reusable array of ``(sem_num, sem_op, sem_flg)`` operations."""
    return (SemBuf * len(triples))(*(SemBuf(*t) for t in triples))


def create(key: int, values: list[int], mode: int = 0o600) -> int | None:
    """Create a set with these initial values; None if ``key`` is taken."""
    semid = _semget(key, len(values), IPC_CREAT | IPC_EXCL | mode)
    if semid < 0:
        if ctypes.get_errno() == errno.EEXIST:
            return None
        raise _semget_error()
    semid = int(semid)
    array = (ctypes.c_ushort * len(values))(*values)
    if _semctl(semid, 0, SETALL, array) < 0:  # pragma: no cover - removed at once
        err = _oserror()
        remove(semid)
        raise err
    return int(semid)


def create_empty(key: int, nsems: int, mode: int) -> int | None:
    """Create a set of ``nsems`` zeros with permissions ``mode``; None if ``key`` is taken.

    The values are set afterwards by one atomic ``semop`` that anyone may perform (see
    ``_sysv``), so a creator that stalls or dies here leaves nothing half-made for long.
    """
    semid = _semget(key, nsems, IPC_CREAT | IPC_EXCL | (mode & 0o777))
    if semid < 0:
        if ctypes.get_errno() == errno.EEXIST:
            return None
        raise _semget_error()
    return int(semid)


class SetInfo(NamedTuple):
    """One line of ``/proc/sysvipc/sem``: a set's id, size, owner, creator, group, mode, age
    and key."""

    semid: int
    nsems: int
    uid: int
    cuid: int
    gid: int
    mode: int
    ctime: int
    key: int


def listing() -> list[SetInfo]:
    """Every System V semaphore set on the host (Linux; empty where ``/proc`` lacks it)."""
    try:
        lines = _read("/proc/sysvipc/sem").splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        try:
            columns = (1, 3, 4, 6, 5, 2, 9, 0)  # perms (2) is octal
            found.append(SetInfo(*(int(fields[i], 8 if i == 2 else 10) for i in columns)))
        except (IndexError, ValueError):  # pragma: no cover - another format
            continue
    return found


def own_sets() -> list[SetInfo]:
    """The sets this user made and still owns (the only ones a sweep may remove)."""
    me = os.geteuid()
    return [info for info in listing() if info.uid == info.cuid == me]


def lookup(key: int) -> int | None:
    """The id of the set with ``key``, or None if there is none."""
    semid = _semget(key, 0, 0)
    if semid < 0:
        if ctypes.get_errno() == errno.ENOENT:
            return None
        raise _oserror()
    return int(semid)


def getval(semid: int, num: int) -> int:
    value: int = _semctl(semid, num, GETVAL)
    if value < 0:
        raise _oserror()
    return value


def getctl(semid: int, num: int, command: int) -> int:
    """``semctl(semid, num, command)`` for the read-only commands (GETPID, GETNCNT)."""
    value: int = _semctl(semid, num, command)
    if value < 0:
        raise _oserror()
    return value


def remove(semid: int) -> bool:
    """Remove the set; False if it was already gone."""
    if _semctl(semid, 0, IPC_RMID) < 0:
        if ctypes.get_errno() in GONE:
            return False
        raise _oserror()
    return True


def semop(semid: int, operations: ctypes.Array[SemBuf]) -> bool:
    """Apply the operations atomically; False if IPC_NOWAIT made them fail with EAGAIN."""
    while _semop(semid, operations, len(operations)) < 0:
        code = ctypes.get_errno()
        if code == errno.EAGAIN:
            return False
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))
    return True


def deadline(timeout: float | None) -> float | None:
    """The monotonic deadline of a (validated, clamped) timeout; None waits forever."""
    return None if timeout is None else time.monotonic() + timeout


def timespec(deadline: float | None) -> object:
    """A ``struct timespec *`` for the time left until ``deadline`` (None: NULL, forever)."""
    if deadline is None:
        return None
    remaining = max(0.0, deadline - time.monotonic())
    frac, whole = math.modf(remaining)
    return ctypes.byref(_TimeSpec(int(whole), int(frac * 1e9)))


def wait(semid: int, operations: ctypes.Array[SemBuf], timeout: float | None) -> bool:
    """Block until the operations apply (True) or ``timeout`` seconds pass (False).

    The call releases the GIL. After EINTR it returns to Python, so signal handlers (and
    KeyboardInterrupt) run, then waits again for the time that is left.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if _semtimedop is None:  # pragma: no cover - macOS
        return _poll(semid, operations, deadline)
    spec = _TimeSpec()
    while True:
        if deadline is None:
            result = _semtimedop(semid, operations, len(operations), None)
        else:
            remaining = max(0.0, deadline - time.monotonic())
            frac, whole = math.modf(remaining)
            spec.tv_sec, spec.tv_nsec = int(whole), int(frac * 1e9)
            result = _semtimedop(semid, operations, len(operations), ctypes.byref(spec))
        if result == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EAGAIN:
            return False
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _poll(
    semid: int, operations: ctypes.Array[SemBuf], deadline: float | None
) -> bool:  # pragma: no cover - macOS has no semtimedop
    nowait = ops(*((b.sem_num, b.sem_op, b.sem_flg | IPC_NOWAIT) for b in operations))
    delay = 0.0001
    while not semop(semid, nowait):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    return True


def _read(path: str) -> str:
    """A /proc file's text (plain open: pathlib would add 5 ms to every CLI call's start)."""
    with open(path) as f:
        return f.read()
