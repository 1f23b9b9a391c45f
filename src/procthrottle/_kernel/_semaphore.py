"""The public ``ProcessSemaphore``: validation, the context manager, and the choice of kernel."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn

from .._typing import Self
from ._validate import DEFAULT_MODE, check_limit, check_name

#: Who wants to hear that a semaphore was closed in this process (the async adapters, whose
#: tasks may wait for a permit that a closed handle can never give them).
_close_listeners: weakref.WeakKeyDictionary[Any, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def on_close(sem: Any, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once, when ``sem`` is closed (or unlinked) in this process."""
    _close_listeners.setdefault(sem, []).append(callback)


def announce_close(sem: Any) -> None:
    """For the kernels' ``close()``: tell the listeners of ``sem``, once."""
    for callback in _close_listeners.pop(sem, ()):
        callback()


class _HoldsPermits:
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


class ProcessSemaphore(_HoldsPermits):
    """A counting semaphore shared by processes, optionally host-wide by name.

    ``ProcessSemaphore(...)`` builds one of three kernels, all subclasses of this class:

    * ``crash_safe=True`` (default, POSIX): a System V semaphore adjusted with ``SEM_UNDO``, so
      the kernel returns the permits of a process that dies, even by SIGKILL.
    * ``crash_safe=False`` (POSIX): the same System V set without ``SEM_UNDO``: any process
      may release a permit, and a permit held by a dead process is lost.
    * Windows: ``multiprocessing.Semaphore`` semantics, neither named nor crash-safe.

    Instances pickle by identity (a kernel key or a name), never by value, so they can be
    passed to ``multiprocessing.Process``, pool initializers and ``ProcessPoolExecutor.submit``
    under every start method.
    """

    __slots__ = ("__weakref__",)

    def __new__(  # noqa: PYI034
        cls,
        limit: int = 1,
        *,
        name: str | None = None,
        crash_safe: bool = True,
        mode: int = DEFAULT_MODE,
    ) -> ProcessSemaphore:  # the kernel subclass, not always cls
        if cls is ProcessSemaphore:
            cls = _kernel_class(crash_safe)
        return object.__new__(cls)

    def __init__(
        self,
        limit: int = 1,
        *,
        name: str | None = None,
        crash_safe: bool = True,
        mode: int = DEFAULT_MODE,
    ) -> None:
        """Create an anonymous semaphore, or create or open a named one.

        Args:
            limit: How many permits it has (1 to 32767, the kernel's largest semaphore value).
                Opening an existing name with another limit raises `ValueError`.
            name: Makes the semaphore host-wide: every process that opens this name shares
                its permits. 1 to 200 characters of `[A-Za-z0-9._-]`. None: anonymous,
                shared by passing the object to child processes.
            crash_safe: True (System V with `SEM_UNDO`): permits of a dead holder come back.
                False (System V without undo): any process may release, a dead holder's
                permits are lost. A name that exists under the other kernel raises
                `ValueError` (one name is one semaphore).
            mode: Permission bits of a new named object (default `0o600`, owner-only). An
                existing name owned by another user is used only if `mode` grants the same
                sharing (`0o660`: a group the caller is in; `0o666`: everyone).

        Raises:
            ValueError: A bad `limit`, `name` or `mode`, another limit or kernel for `name`.
            TypeError: An argument of the wrong type.
            PermissionError: `name` belongs to another user and `mode` does not share it.
        """
        raise NotImplementedError  # pragma: no cover - every kernel defines its own

    @classmethod
    def open(
        cls, name: str, *, crash_safe: bool = True, mode: int = DEFAULT_MODE
    ) -> ProcessSemaphore:
        """Open an existing named semaphore, whatever its limit.

        Args:
            name: The semaphore's name.
            crash_safe: Which kernel it lives in (as it was created).
            mode: The sharing this caller accepts, as for the constructor.

        Returns:
            A handle on the semaphore; its `limit` is the one it was created with.

        Raises:
            FileNotFoundError: No semaphore of that kernel has this name.
            PermissionError: It belongs to another user and `mode` does not share it.
        """
        from ._validate import check_mode

        check_name(name)
        if name is None:
            raise TypeError("name must be a str, not None")
        check_mode(mode)
        kernel = _kernel_class(crash_safe)
        opener = getattr(kernel, "_open_existing", None)
        if opener is None:
            raise NotImplementedError("named semaphores are not available on this platform")
        sem: ProcessSemaphore = opener(name, mode)
        return sem

    # -- the interface every kernel implements ---------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one permit, as `multiprocessing.Semaphore.acquire`.

        Args:
            block: False: return at once if no permit is free.
            timeout: Seconds to wait at most (None or `inf`: forever; negative: do not
                wait). Checked but ignored with `block=False`, as by multiprocessing.

        Returns:
            True when a permit was taken, False when none came.

        Raises:
            SemaphoreClosedError: The handle was closed (nothing is taken), or the
                semaphore was unlinked.
            ValueError: `timeout` is NaN.
            TypeError: `timeout` is not a number.
        """
        raise NotImplementedError  # pragma: no cover

    def release(self, n: int = 1) -> None:
        """Return `n` permits.

        Args:
            n: How many (an int >= 1).

        Raises:
            ValueError: The value would exceed `limit`, or (crash-safe) this process holds
                fewer than `n` permits; nothing changes.
            SemaphoreClosedError: The handle was closed; nothing changes.
        """
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
        """Remove the semaphore from the host, then close this handle.

        Other handles of it, in any process, raise `SemaphoreClosedError` at their next use
        (both kernels). Opening the name again makes a new semaphore.
        """
        raise NotImplementedError  # pragma: no cover

    # -- shared behaviour --------------------------------------------------------------------
    def __aenter__(self) -> NoReturn:
        raise TypeError(
            "ProcessSemaphore blocks the thread, so it cannot be used with "
            "`async with`; wrap it: `async with procthrottle.AsyncSemaphore(sem):` (or use "
            "`with sem:` in synchronous code)"
        )

    def __aexit__(self, *exc_info: object) -> NoReturn:
        raise TypeError("use `async with procthrottle.AsyncSemaphore(sem):`")

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
    from ._shared import SharedSemaphore

    return SharedSemaphore


def validate(limit: object, name: object, *, maximum: int) -> tuple[int, str | None]:
    """Check the constructor's arguments (limit first, then name)."""
    return check_limit(limit, maximum=maximum), check_name(name)
