"""The fast kernel: a POSIX semaphore (a futex in shared memory), not crash-safe.

Uncontended acquire and release never enter the kernel, which makes this several times faster
than the System V kernel; the price is that the kernel does not know who holds a permit, so the
permits of a process that dies while holding them are lost. In exchange a permit may be released
by any process. The limit of a named semaphore is kept as the value of a companion semaphore
that nobody acquires.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from multiprocessing.util import Finalize
from typing import Any, NoReturn

import posix_ipc

from .._exceptions import SemaphoreClosedError
from ._semaphore import ProcessSemaphore, validate
from ._validate import check_count, check_timeout

MAX_LIMIT: int = posix_ipc.SEMAPHORE_VALUE_MAX
_MODE = 0o600


def os_names(name: str) -> tuple[str, str]:
    """The permit and limit semaphores of ``name``: hashed, since macOS allows 31 bytes."""
    digest = hashlib.blake2b(name.encode(), digest_size=10, person=b"procthrottle.psx").hexdigest()
    return f"/pt-{digest}", f"/pt-{digest}.l"


def _open(os_name: str, *, create: int = 0, value: int = 0) -> Any:
    return posix_ipc.Semaphore(os_name, create, _MODE, value)


def _open_or_create_named(name: str, limit: int) -> tuple[Any, str]:
    permits_name, limit_name = os_names(name)
    try:  # the limit semaphore comes first: once it exists, the permits follow at once
        limit_sem = _open(limit_name, create=posix_ipc.O_CREX, value=limit)
    except posix_ipc.ExistentialError:
        limit_sem = _open(limit_name)
        existing = limit_sem.value
        limit_sem.close()
        if existing != limit:
            raise ValueError(
                f"semaphore {name!r} (crash_safe=False) already exists with limit={existing}, "
                f"not {limit}; open it with limit={existing}, or unlink it first"
            ) from None
        deadline = time.monotonic() + 2.0
        while True:
            try:
                return _open(permits_name), permits_name
            except posix_ipc.ExistentialError:
                if time.monotonic() > deadline:
                    raise SemaphoreClosedError(
                        f"semaphore {name!r} is half-made (its creator died); unlink it"
                    ) from None
                time.sleep(0.001)
    limit_sem.close()
    return _open(permits_name, create=posix_ipc.O_CREAT, value=limit), permits_name


def _finalize(handle: Any, os_name: str, owned: bool) -> None:
    handle.close()
    if owned:  # the creator of an anonymous semaphore removes its name
        try:
            posix_ipc.unlink_semaphore(os_name)
        except posix_ipc.ExistentialError:
            pass


class PosixSemaphore(ProcessSemaphore):
    """``ProcessSemaphore(crash_safe=False)`` on Linux and macOS."""

    __slots__ = ("_closed", "_finalizer", "_handle", "_limit", "_name", "_os_name")

    _handle: Any  # posix_ipc.Semaphore

    def __init__(self, limit: int = 1, *, name: str | None = None, crash_safe: bool = False) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        if name is None:
            while True:
                os_name = f"/pt-anon-{secrets.token_hex(8)}"
                try:
                    handle = _open(os_name, create=posix_ipc.O_CREX, value=limit)
                    break
                except posix_ipc.ExistentialError:  # pragma: no cover - 64-bit collision
                    continue
        else:
            handle, os_name = _open_or_create_named(name, limit)
        self._setup(handle, os_name, limit, name, owned=name is None)

    def _setup(self, handle: Any, os_name: str, limit: int, name: str | None, *, owned: bool) -> None:
        self._handle, self._os_name, self._limit, self._name = handle, os_name, limit, name
        self._closed = False
        self._finalizer = Finalize(self, _finalize, args=(handle, os_name, owned), exitpriority=10)

    @classmethod
    def _open_anonymous(cls, os_name: str, limit: int) -> PosixSemaphore:
        try:
            handle = _open(os_name)
        except posix_ipc.ExistentialError:
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: the process that created it closed "
                "it or exited. Keep the creator's ProcessSemaphore alive while others use it, "
                "or give it a name="
            ) from None
        self = ProcessSemaphore.__new__(cls)
        self._setup(handle, os_name, limit, None, owned=False)
        return self

    def _raise_closed(self) -> NoReturn:
        raise SemaphoreClosedError("the semaphore was closed in this process")

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if self._closed:
            self._raise_closed()
        try:
            if not block:
                self._handle.acquire(0)
            elif timeout is None:
                while True:
                    try:
                        self._handle.acquire()  # sem_wait, GIL released
                        break
                    except posix_ipc.SignalError:
                        continue  # handlers (KeyboardInterrupt) have run; wait again
            else:
                timeout = check_timeout(timeout)
                self._handle.acquire(max(timeout or 0.0, 0.0))
        except posix_ipc.BusyError:
            return False
        return True

    def release(self, n: int = 1) -> None:
        if n.__class__ is not int or n < 1:
            check_count(n)
        if self._closed:
            self._raise_closed()
        handle = self._handle
        if handle.value + n > self._limit:
            raise ValueError(
                f"release(n={n}) would raise the value above limit={self._limit} "
                f"(value is {handle.value}); release only permits that were acquired"
            )
        for _ in range(n):
            handle.release()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def crash_safe(self) -> bool:
        return False

    @property
    def value(self) -> int:
        if self._closed:
            self._raise_closed()
        value: int = self._handle.value
        return value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finalizer()

    def unlink(self) -> None:
        if self._name is not None:
            unlink_named(self._name)
        else:
            try:
                posix_ipc.unlink_semaphore(self._os_name)
            except posix_ipc.ExistentialError:
                pass
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        if self._name is not None:
            return (_open_named, (self._name, self._limit))
        return (PosixSemaphore._open_anonymous, (self._os_name, self._limit))


def _open_named(name: str, limit: int) -> ProcessSemaphore:
    return ProcessSemaphore(limit, name=name, crash_safe=False)


def find_named(name: str) -> tuple[int, int] | None:
    """``(limit, value)`` of the named semaphore, or None if it does not exist."""
    permits_name, limit_name = os_names(name)
    try:
        limit_sem, permits = _open(limit_name), _open(permits_name)
    except posix_ipc.ExistentialError:
        return None
    try:
        return limit_sem.value, permits.value
    finally:
        limit_sem.close()
        permits.close()


def unlink_named(name: str) -> bool:
    """Remove the named semaphore's OS objects; False if there were none."""
    removed = False
    for os_name in os_names(name):
        try:
            posix_ipc.unlink_semaphore(os_name)
            removed = True
        except posix_ipc.ExistentialError:
            pass
    return removed
