"""The public ``ProcessSemaphore``: validation, the context manager, and the choice of kernel."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from .._typing import Self
from ._validate import check_limit, check_name


class HoldsPermits:
    """``with sem:`` for any semaphore with ``acquire()`` and ``release()``."""

    __slots__ = ()

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover

    def release(self, n: int = 1) -> None:
        raise NotImplementedError  # pragma: no cover

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ProcessSemaphore(HoldsPermits):
    """A counting semaphore shared by processes, optionally host-wide by name.

    ``ProcessSemaphore(...)`` builds one of three kernels, all subclasses of this class:

    * ``crash_safe=True`` (default, POSIX): a System V semaphore adjusted with ``SEM_UNDO``, so
      the kernel returns the permits of a process that dies, even by SIGKILL.
    * ``crash_safe=False`` (POSIX): a POSIX semaphore, a futex in shared memory: faster, but a
      permit held by a dead process is lost.
    * Windows: ``multiprocessing.Semaphore`` semantics, neither named nor crash-safe.

    Instances pickle by identity (a kernel key or a name), never by value, so they can be
    passed to ``multiprocessing.Process``, pool initializers and ``ProcessPoolExecutor.submit``
    under every start method.
    """

    __slots__ = ("__weakref__",)

    def __new__(  # noqa: PYI034
        cls, limit: int = 1, *, name: str | None = None, crash_safe: bool = True
    ) -> ProcessSemaphore:  # the kernel subclass, not always cls
        if cls is ProcessSemaphore:
            cls = _kernel_class(crash_safe)
        return object.__new__(cls)

    def __init__(self, limit: int = 1, *, name: str | None = None, crash_safe: bool = True) -> None:
        raise NotImplementedError  # pragma: no cover - every kernel defines its own

    # -- the interface every kernel implements ---------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; return False if none came (``block=False`` or timeout elapsed)."""
        raise NotImplementedError  # pragma: no cover

    def release(self, n: int = 1) -> None:
        """Return ``n`` permits; ``ValueError`` (and no change) if that would exceed ``limit``."""
        raise NotImplementedError  # pragma: no cover

    @property
    def limit(self) -> int:
        """The number of permits the semaphore was created with."""
        raise NotImplementedError  # pragma: no cover

    @property
    def name(self) -> str | None:
        """The host-wide name, or None for an anonymous semaphore."""
        raise NotImplementedError  # pragma: no cover

    @property
    def value(self) -> int:
        """Free permits right now: a snapshot, stale as soon as it is read."""
        raise NotImplementedError  # pragma: no cover

    @property
    def crash_safe(self) -> bool:
        """Whether permits of a dead holder come back."""
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        """Drop this handle; idempotent. Later use raises ``SemaphoreClosedError``."""
        raise NotImplementedError  # pragma: no cover

    def unlink(self) -> None:
        """Remove the semaphore from the host, then close this handle."""
        raise NotImplementedError  # pragma: no cover

    # -- shared behaviour --------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            value: Any = self.value
        except Exception:
            value = "closed"
        return (
            f"ProcessSemaphore(limit={self.limit}, name={self.name!r}, "
            f"crash_safe={self.crash_safe}, value={value})"
        )


def _kernel_class(crash_safe: object) -> type[ProcessSemaphore]:
    if not isinstance(crash_safe, bool):
        raise TypeError(f"crash_safe must be a bool, not {type(crash_safe).__name__}")
    if sys.platform == "win32":
        from ._fallback import FallbackSemaphore

        return FallbackSemaphore
    if crash_safe:
        from ._sysv import SysVSemaphore

        return SysVSemaphore
    from ._posix import PosixSemaphore

    return PosixSemaphore


def validate(limit: object, name: object, *, maximum: int) -> tuple[int, str | None]:
    """Check the constructor's arguments (limit first, then name)."""
    return check_limit(limit, maximum=maximum), check_name(name)
