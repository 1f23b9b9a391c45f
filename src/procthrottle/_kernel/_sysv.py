"""The crash-safe kernel: a System V semaphore set adjusted with ``SEM_UNDO``.

A set holds five semaphores: the free permits, an attach counter, the limit, and a 30-bit
tag naming its owner (0 for anonymous sets). Every change a process makes to the permits and
to the attach counter is recorded by the kernel as an undo value, which it applies when the
process exits, whatever the cause. So a SIGKILLed holder's permits come back, and the attach
counter always counts the processes that still use the set; the last process to detach from an
anonymous set removes it. Creation is split in two (``_naming``): ``semget`` makes a set of
zeros, then one atomic ``semop`` that anyone may perform gives it its limit and tag.
docs/design.md explains why.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import time
from multiprocessing.util import Finalize
from typing import Any, ClassVar, NoReturn

import sysv_ipc

from .._exceptions import SemaphoreClosedError
from . import _libc
from ._handles import (
    _ATTACH,
    _AttachOnUse,
    _Closed,
    _detach,
    _handles,
    _held,
    _tokens,
)
from ._naming import (
    ANONYMOUS_TAG,
    ATTACH,
    PERMITS,
    check_access,
    create_anonymous,
    describe_anonymous,
    find_named,
    open_or_create_named,
)
from ._semaphore import ProcessSemaphore, announce_close, validate
from ._validate import DEFAULT_MODE, MAX_LIMIT, check_acquire, check_count, check_mode

__all__ = ["ANONYMOUS_TAG", "ATTACH", "PERMITS", "SysVSemaphore", "find_named", "unlink_named"]

_semtimedop = _libc._semtimedop
_ACQUIRE = _libc.ops((PERMITS, -1, _libc.SEM_UNDO))
_RETURN = _libc.ops((PERMITS, 1, _libc.SEM_UNDO))
#: How often opening a name starts over because it was unlinked meanwhile.
_REOPEN_TRIES = 20


class _Vanished(Exception):
    """The set found for a name was removed before we attached to it."""


class SysVSemaphore(ProcessSemaphore):
    """``ProcessSemaphore(crash_safe=True)`` on Linux and macOS."""

    __slots__ = (
        "_finalizer", "_handle", "_held", "_key", "_limit", "_made", "_mode", "_name", "_semid"
    )

    _handle: Any  # sysv_ipc.Semaphore with block=False, undo=True; _AttachOnUse; or _Closed
    _finalizer: Finalize | None
    #: Which kernel: the size of the set (``_naming``) and the operations on its permits.
    _CRASH_SAFE: ClassVar[bool] = True

    def __init__(
        self,
        limit: int = 1,
        *,
        name: str | None = None,
        crash_safe: bool = True,
        mode: int = DEFAULT_MODE,
    ) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        mode = check_mode(mode)
        if name is None:
            key, semid = create_anonymous(limit, self._CRASH_SAFE)
            self._setup(key, semid, limit, None, mode, created=True)
        else:
            self._setup_named(name, limit, mode)

    @classmethod
    def _open_existing(cls, name: str, mode: int = DEFAULT_MODE) -> SysVSemaphore:
        """``ProcessSemaphore.open(name)``: the set must exist; its limit is read from it."""
        self = object.__new__(cls)
        self._setup_named(name, None, mode)
        return self

    def _setup_named(self, name: str, limit: int | None, mode: int) -> None:
        """Open or create NAME; if it is unlinked while we attach, look it up again.

        Between finding the set and attaching to it another process may unlink the name (and
        perhaps create it anew): the set we found is gone, but the name is not, so we start
        over rather than fail (or attach to a set that no longer has the name).
        """
        for _ in range(_REOPEN_TRIES):
            key, semid, found_limit, created = open_or_create_named(
                name, limit, mode, self._CRASH_SAFE
            )
            try:
                self._setup(key, semid, found_limit, name, mode, created=created)
                return
            except _Vanished:
                continue
        raise SemaphoreClosedError(
            f"the semaphore {name!r} was unlinked {_REOPEN_TRIES} times while this process "
            "opened it: stop the program that keeps unlinking it, then open it again"
        )

    @classmethod
    def _open_anonymous(cls, key: int, limit: int) -> SysVSemaphore:
        try:
            semid = _libc.lookup(key)
        except PermissionError:
            semid = None
        if semid is not None:
            check_access(key, semid, "this anonymous semaphore", DEFAULT_MODE)
        if semid is None or describe_anonymous(key, semid, cls._CRASH_SAFE) != limit:
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: every process that used it closed "
                "it or exited. Keep the creating process's ProcessSemaphore alive while others "
                "use it, or give it a name="
            )
        self = object.__new__(cls)
        try:
            self._setup(key, semid, limit, None, DEFAULT_MODE, created=False)
        except _Vanished:
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: every process that used it closed "
                "it or exited"
            ) from None
        return self

    def _setup(
        self, key: int, semid: int, limit: int, name: str | None, mode: int, *, created: bool
    ) -> None:
        self._key, self._semid, self._limit, self._name, self._mode = key, semid, limit, name, mode
        # An anonymous set this process made (or the process it was forked from, before the fork),
        # not one it received by pickle: @throttle refuses to use it as a bound in a process that
        # multiprocessing started by importing the module (see _async/_throttled.py).
        self._made = created and name is None
        self._held = _tokens(semid, fresh=created)
        self._finalizer = None
        try:
            handle = sysv_ipc.Semaphore(key)
        except sysv_ipc.ExistentialError:
            raise _Vanished from None  # unlinked since we found it
        if handle.id != semid:  # unlinked and made anew since we found it
            raise _Vanished
        handle.block, handle.undo = False, True
        self._handle = handle
        _handles.add(self)
        if not (created and name is None):  # a new anonymous set was attached as it was made
            try:
                self._attach()
            except SemaphoreClosedError:
                raise _Vanished from None
        else:
            self._register_finalizer()

    def _attach(self) -> None:
        try:
            _libc.semop(self._semid, _ATTACH)
        except OSError as exc:
            if exc.errno in _libc.GONE:
                self._gone(exc)
            self._handle = _Closed(f"could not attach: {exc}")
            if exc.errno == errno.EACCES:
                raise PermissionError(
                    exc.errno, f"no permission to use this semaphore ({exc.strerror})"
                ) from exc
            if exc.errno == errno.ERANGE:
                raise OSError(
                    exc.errno,
                    f"too many handles ({MAX_LIMIT}) are open on this semaphore across the "
                    "host; close some (every ProcessSemaphore object and process counts once)",
                ) from exc
            raise
        self._register_finalizer()

    def _register_finalizer(self) -> None:
        """Detach when this handle is closed, collected, or its process exits normally."""
        self._finalizer = Finalize(
            self, _detach, args=(self._semid, self._name is None), exitpriority=10
        )

    def _detached_after_fork(self) -> None:
        """In a forked child: forget the parent's attach and tokens, attach on first use."""
        self._held = _tokens(self._semid)
        self._finalizer = None
        handle = self._handle
        if isinstance(handle, _AttachOnUse):
            handle = handle.handle
        if not isinstance(handle, _Closed):
            self._handle = _AttachOnUse(self, handle)

    def _gone_message(self) -> str:
        what = "anonymous semaphore" if self._name is None else f"semaphore {self._name!r}"
        return f"the {what} was unlinked from the host"

    def _gone(self, exc: BaseException) -> NoReturn:
        self._handle = _Closed(self._gone_message())
        raise SemaphoreClosedError(self._gone_message()) from exc

    # -- hot path -------------------------------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if timeout is not None:
            timeout = check_acquire(block, timeout)
        handle = self._handle
        if handle.__class__ is _AttachOnUse:
            handle = handle.attach()
        try:
            handle.acquire()
        except sysv_ipc.BusyError:
            if not block or (timeout is not None and timeout <= 0):
                return False
            return self._wait(timeout)
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)
        except BaseException:
            if handle.__class__ is sysv_ipc.Semaphore:
                # The operation succeeded and a signal handler raised right after it (only
                # sysv_ipc's own errors come from a failed operation): keep the permit's token.
                self._held.append(None)
            raise
        self._held.append(None)
        return True

    def _wait(self, timeout: float | None) -> bool:
        """Block in the kernel until a permit comes (True) or the timeout passes (False).

        ``semtimedop`` and the token's append run in one chain of C calls (``extend`` pulls
        from ``filter`` from ``map``): no Python code, hence no signal handler, runs between
        them, so an exception from a handler never strands the permit.
        """
        if _semtimedop is None:  # pragma: no cover - macOS: poll the non-blocking path
            return self._poll(timeout)
        deadline = _libc.deadline(timeout)
        semid_, ops_, count_ = (self._semid,), (_ACQUIRE,), (len(_ACQUIRE),)
        held = self._held
        while True:
            spec = _libc.timespec(deadline)
            ctypes.set_errno(0)
            held.extend(filter(operator.not_, map(_semtimedop, semid_, ops_, count_, (spec,))))
            code = ctypes.get_errno()
            if code == 0:
                break
            if code == errno.EAGAIN:
                return False
            if code in _libc.GONE:
                self._gone(OSError(code, os.strerror(code)))
            if code != errno.EINTR:
                raise OSError(code, f"semtimedop: {os.strerror(code)}")
            # EINTR: signal handlers ran at the line above (and may have raised); wait again
        if self._handle.__class__ is _Closed:  # closed by another thread while we waited
            self._give_back()
            raise SemaphoreClosedError(self._handle.message)
        return True

    def _poll(self, timeout: float | None) -> bool:  # pragma: no cover - macOS
        deadline = _libc.deadline(timeout)
        delay = 0.0001
        while not self.acquire(block=False):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        return True

    def _give_back(self) -> None:
        self._held.pop()
        try:
            _libc.semop(self._semid, _RETURN)
        except OSError as exc:  # pragma: no cover - removed meanwhile: nothing to give back
            if exc.errno not in _libc.GONE:
                raise

    def release(self, n: int = 1) -> None:
        if n.__class__ is not int or n < 1:
            check_count(n)
        held = self._held
        taken = 0
        try:
            while taken < n:
                try:
                    held.pop()
                except IndexError:
                    raise
                except BaseException:
                    taken += 1  # popped; a signal handler raised right after
                    raise
                taken += 1
        except IndexError:
            held.extend([None] * taken)
            self._refuse_release(n, taken)
        except BaseException:
            held.extend([None] * taken)
            raise
        handle = self._handle
        try:
            handle.release(n)
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)
        except BaseException:
            if handle.__class__ is not sysv_ipc.Semaphore:  # closed: nothing was returned
                held.extend([None] * n)
            raise

    def _refuse_release(self, n: int, held: int) -> NoReturn:
        value = self.value
        if n + value > self._limit:
            raise ValueError(
                f"release(n={n}) would raise the value above limit={self._limit} "
                f"(value is {value}); release only permits you acquired"
            )
        raise ValueError(
            f"release(n={n}), but this process holds {held} permit(s) of this crash-safe "
            "semaphore; the kernel returns a permit to the semaphore when the process that "
            "acquired it exits, so it must be released by that process. Release it where it "
            "was acquired, or use crash_safe=False to hand permits between processes"
        )

    # -- the rest ---------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def crash_safe(self) -> bool:
        return True

    @property
    def value(self) -> int:
        try:
            value: int = self._handle.value
        except sysv_ipc.ExistentialError as exc:
            self._gone(exc)
        return value

    @property
    def attached(self) -> int:
        """How many handles, across all processes, have this set open."""
        try:
            return _libc.getval(self._semid, ATTACH)
        except OSError as exc:
            self._gone(exc)

    def close(self) -> None:
        if isinstance(self._handle, _Closed):
            return
        self._handle = _Closed("the semaphore was closed in this process")
        _handles.discard(self)
        if self._finalizer is not None:  # None: a forked child that never used it
            self._finalizer()
        announce_close(self)

    def unlink(self) -> None:
        if self._name is not None:
            unlink_named(self._name, self._CRASH_SAFE)
        elif _libc.remove(self._semid):
            _held.pop(self._semid, None)
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self._handle, _Closed):
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        if self._name is not None:
            return (_open_named, (self._name, self._limit, self._mode, self._CRASH_SAFE))
        return (type(self)._open_anonymous, (self._key, self._limit))


def _open_named(
    name: str, limit: int, mode: int = DEFAULT_MODE, crash_safe: bool = True
) -> ProcessSemaphore:
    """Unpickling joins the name the sender had open and never creates it: a name removed
    from the host since it was sent (``procthrottle unlink``) is an error here, not a second
    semaphore of that name with permits of its own."""
    try:
        sem = ProcessSemaphore.open(name, crash_safe=crash_safe, mode=mode)
    except FileNotFoundError:
        raise SemaphoreClosedError(
            f"the semaphore {name!r} sent to this process was removed from the host (unlinked) "
            "since: open it again by name in the sender, or send a handle of the new one"
        ) from None
    if sem.limit != limit:
        sem.close()
        raise SemaphoreClosedError(
            f"the semaphore {name!r} sent to this process was removed from the host (unlinked) "
            f"and made anew with limit {sem.limit} (it had {limit}): send a handle of the new one"
        )
    return sem


def unlink_named(name: str, crash_safe: bool | None = None) -> bool:
    """Remove the named set from the host (half-made too); False if there was none.

    ``crash_safe`` True or False removes it only if it belongs to that kernel.
    """
    from . import _registry

    found = find_named(name, crash_safe)
    for kind in (True, False) if crash_safe is None else (crash_safe,):
        _registry.discard(name, kind)
    if found is None:
        return False
    removed = _libc.remove(found[1])
    if removed:
        _held.pop(found[1], None)
    return removed
