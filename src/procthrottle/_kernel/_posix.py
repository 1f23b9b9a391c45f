"""The fast kernel: a POSIX semaphore (a futex in shared memory), not crash-safe.

It is the C ``SemLock`` that ``multiprocessing.Semaphore`` is built on, opened by name so that it
pickles by identity. Uncontended acquire and release never enter the kernel nor release the GIL,
which makes this kernel several times faster than the System V one; the price is that the kernel
does not know who holds a permit, so the permits of a process that dies holding them are lost.
In exchange any process may release a permit. The limit of a named semaphore is kept as the
value of a companion semaphore that nobody acquires.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from _multiprocessing import SemLock, sem_unlink
from multiprocessing.util import Finalize
from typing import Any, NoReturn

from .._exceptions import SemaphoreClosedError
from ._semaphore import ProcessSemaphore, validate
from ._validate import check_count

MAX_LIMIT = 2**31 - 1  # SEM_VALUE_MAX on Linux
_SEMAPHORE = 1  # SemLock kind; created owner-only (0o600) by SemLock itself


def os_names(name: str) -> tuple[str, str]:
    """The permit and limit semaphores of ``name``: hashed, since macOS allows 31 bytes."""
    digest = hashlib.blake2b(name.encode(), digest_size=10, person=b"procthrottle.psx").hexdigest()
    return f"/pt-{digest}", f"/pt-{digest}.l"


def _create(os_name: str, limit: int) -> Any:
    return SemLock(_SEMAPHORE, limit, limit, os_name, False)


def _open(os_name: str, limit: int) -> Any:
    return SemLock._rebuild(0, _SEMAPHORE, limit, os_name)


def _unlink(os_name: str) -> bool:
    try:
        sem_unlink(os_name)
    except FileNotFoundError:
        return False
    return True


def _open_or_create_named(name: str, limit: int) -> tuple[Any, str]:
    permits_name, limit_name = os_names(name)
    try:  # the limit semaphore comes first: once it exists, the permits follow at once
        _create(limit_name, limit)
    except FileExistsError:
        existing = _open(limit_name, limit)._get_value()
        if existing != limit:
            raise ValueError(
                f"semaphore {name!r} (crash_safe=False) already exists with limit={existing}, "
                f"not {limit}; open it with limit={existing}, or unlink it first"
            ) from None
        deadline = time.monotonic() + 2.0
        while True:
            try:
                return _open(permits_name, limit), permits_name
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise SemaphoreClosedError(
                        f"semaphore {name!r} is half-made (its creator died); unlink it"
                    ) from None
                time.sleep(0.001)
    return _create(permits_name, limit), permits_name


def _closed(*args: object, **kwargs: object) -> NoReturn:
    raise SemaphoreClosedError("the semaphore was closed in this process")


class PosixSemaphore(ProcessSemaphore):
    """``ProcessSemaphore(crash_safe=False)`` on Linux and macOS.

    ``acquire`` is the C method of the underlying ``SemLock``, bound on the instance: the hot
    path runs no Python code at all.
    """

    # no __slots__: the instance dict holds the bound C acquire

    def __init__(
        self, limit: int = 1, *, name: str | None = None, crash_safe: bool = False
    ) -> None:
        limit, name = validate(limit, name, maximum=MAX_LIMIT)
        if name is None:
            os_name = f"/pt-anon-{secrets.token_hex(8)}"
            lock = _create(os_name, limit)
        else:
            lock, os_name = _open_or_create_named(name, limit)
        self._setup(lock, os_name, limit, name, owned=name is None)

    def _setup(self, lock: Any, os_name: str, limit: int, name: str | None, *, owned: bool) -> None:
        self._lock, self._os_name, self._limit, self._name = lock, os_name, limit, name
        self._closed = False
        self.acquire = lock.acquire  # type: ignore[method-assign]
        self._release = lock.release
        # The creator of an anonymous semaphore removes its name when it closes or exits;
        # processes that opened it keep working (POSIX unlink semantics).
        self._finalizer = Finalize(
            self, _unlink if owned else _noop, args=(os_name,), exitpriority=10
        )

    @classmethod
    def _open_anonymous(cls, os_name: str, limit: int) -> PosixSemaphore:
        try:
            lock = _open(os_name, limit)
        except FileNotFoundError:
            raise SemaphoreClosedError(
                "this anonymous semaphore no longer exists: the process that created it closed "
                "it or exited. Keep the creator's ProcessSemaphore alive while others use it, "
                "or give it a name="
            ) from None
        self = object.__new__(cls)
        self._setup(lock, os_name, limit, None, owned=False)
        return self

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover - replaced per instance in _setup

    def release(self, n: int = 1) -> None:
        try:
            if n == 1 and n.__class__ is int:
                self._release()
                return
            check_count(n)
            if self._closed:
                _closed()
            if self._lock._get_value() + n > self._limit:
                raise ValueError("semaphore or lock released too many times")
            for _ in range(n):
                self._release()
        except ValueError as exc:
            if "too many" not in str(exc):
                raise
            raise ValueError(
                f"release(n={n}) would raise the value above limit={self._limit} "
                f"(value is {self.value}); release only permits that were acquired"
            ) from None

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
            _closed()
        value: int = self._lock._get_value()
        return value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.acquire = self._release = _closed  # type: ignore[method-assign]
            self._finalizer()

    def unlink(self) -> None:
        if self._name is not None:
            unlink_named(self._name)
        else:
            _unlink(self._os_name)
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise SemaphoreClosedError("cannot pickle a closed semaphore")
        if self._name is not None:
            return (_open_named, (self._name, self._limit))
        return (PosixSemaphore._open_anonymous, (self._os_name, self._limit))


def _noop(os_name: str) -> None:
    pass


def _open_named(name: str, limit: int) -> ProcessSemaphore:
    return ProcessSemaphore(limit, name=name, crash_safe=False)


def find_named(name: str) -> tuple[int, int] | None:
    """``(limit, value)`` of the named semaphore, or None if it does not exist."""
    permits_name, limit_name = os_names(name)
    try:
        limit = _open(limit_name, 1)._get_value()
        return limit, _open(permits_name, limit)._get_value()
    except FileNotFoundError:
        return None


def unlink_named(name: str) -> bool:
    """Remove the named semaphore's OS objects; False if there were none."""
    removed = [_unlink(os_name) for os_name in os_names(name)]  # both, no short cut
    return any(removed)
