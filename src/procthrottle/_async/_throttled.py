"""What a ``@throttle`` decoration is made of, and how it travels to another process.

`Limits` is the state one ``throttle(...)`` call makes: its semaphore (and async adapter) and
its rate gate, shared by every function it decorates. `Throttled` is the decorated callable.

A plain function pickles by its qualified name, so a process that unpickles it re-imports its
module and runs ``@throttle(N)`` again: a new anonymous semaphore, a bound of its own. A
`Throttled` pickles by name too, *plus* what its `Limits` hold (the semaphore's and the rate
limiter's own pickles, which reopen the same kernel objects); the receiving process looks the
name up as usual and makes that object's `Limits` adopt them. Every process a decorated function
reaches by pickling — pool workers under fork, spawn and forkserver, ``Process(target=...)`` —
therefore shares the permits of the process that sent it.

A process started by `multiprocessing` that imported the module itself (or got it by fork from
the forkserver, which may have imported it) and never received the function would silently
have a bound of its own; its first call of such a function raises instead
(`Limits.check_shared`).
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import os
import pickle
import threading
import types
from typing import Any

from .._exceptions import ProcThrottleError
from .._kernel._semaphore import ProcessSemaphore
from .._rate._async import AsyncRateLimiter
from .._rate._gates import RateGate, rate_gate
from ._semaphore import AsyncSemaphore, SyncSemaphore


class Adapter:
    """The AsyncSemaphore of a semaphore, made on first use (it is cheap: every adapter over
    one semaphore shares one core and one waiter thread)."""

    __slots__ = ("_async", "semaphore")

    def __init__(self, semaphore: ProcessSemaphore | SyncSemaphore) -> None:
        self.semaphore = semaphore
        self._async: AsyncSemaphore | None = None

    def get(self) -> AsyncSemaphore:
        adapter = self._async
        if adapter is None:
            adapter = self._async = AsyncSemaphore(self.semaphore)
        return adapter


class Limits:
    """The semaphore and rate of one ``throttle(...)`` call, shared by what it decorates.

    ``made_sem`` / ``made_rate`` are true while the semaphore / rate limiter is an anonymous
    one that ``throttle`` made in this process from an ``int`` / a rate string, and no other
    process's pickle replaced it (it is closed when one does). ``local`` is true while the
    semaphore or the rate limiter is anonymous and made in this process (by ``throttle`` or by
    the caller, e.g. a module-level ``ProcessSemaphore(1)``), not received by pickle: such a
    bound is shared only with the processes forked from it.
    """

    __slots__ = (
        "_carried",
        "_lock",
        "_pid",
        "adapter",
        "checked",
        "gate",
        "local",
        "made_rate",
        "made_sem",
        "sem",
        "top",
        "what",
    )

    def __init__(
        self,
        sem: ProcessSemaphore | SyncSemaphore | None,
        adapter: Adapter | None,
        gate: RateGate | None,
        *,
        made_sem: bool,
        made_rate: bool,
        what: str,
    ) -> None:
        self.sem, self.adapter, self.gate = sem, adapter, gate
        self.made_sem, self.made_rate, self.what = made_sem, made_rate, what
        self.local = (
            made_sem or made_rate or _made_here(sem) or _made_here(_rate_source(gate))
        )
        self._pid = os.getpid()
        # Made in a process that multiprocessing did not start (the program itself): a local
        # bound is the program's own bound only in the processes forked from such a process.
        # (A spawned child imports its modules before multiprocessing sets its parent process,
        # while its current process is `_inheriting`.)
        current = multiprocessing.current_process()
        self.top = multiprocessing.parent_process() is None and not getattr(
            current, "_inheriting", False
        )
        self.checked = -1  # the `forks` value when check_shared last passed
        self._carried: tuple[bytes | None, bytes | None] | None = None
        self._lock = threading.Lock()

    def carry(self) -> tuple[bytes | None, bytes | None]:
        """The pickles of the semaphore and the rate limiter, for another process to adopt.

        Raises:
            SemaphoreClosedError: The semaphore or rate limiter was closed.
            pickle.PicklingError: (Or the error of the object) one of them cannot travel.
        """
        return _dumps(self.sem), _dumps(_rate_source(self.gate))

    def adopt(self, carried: tuple[bytes | None, bytes | None]) -> None:
        """Use the semaphore and rate limiter another process sent (no-op if they are ours)."""
        if carried == self._carried:
            return
        with self._lock:
            if carried == self._carried:
                return
            if carried != self._own():
                sem_bytes, rate_bytes = carried
                sem = None if sem_bytes is None else pickle.loads(sem_bytes)
                rate = None if rate_bytes is None else pickle.loads(rate_bytes)
                made: list[Any] = [self.sem if self.made_sem else None,
                                   _rate_source(self.gate) if self.made_rate else None]
                self.sem, self.adapter = sem, (None if sem is None else Adapter(sem))
                self.gate = rate_gate(rate)
                for old in made:  # made here at import and never used across processes
                    if old is not None:
                        old.close()
            self.made_sem = self.made_rate = self.local = False
            self._carried = carried

    def _own(self) -> tuple[bytes | None, bytes | None] | None:
        try:
            return self.carry()
        except Exception:  # closed, or cannot travel: not what was sent, whatever it is
            return None

    def check_shared(self, function: str) -> None:
        """Refuse a bound that would silently be this process's own (see the module's doc).

        In a process started by `multiprocessing`, a local bound (an anonymous semaphore or
        rate made in a process and no pickle replaced) is shared with the parent only if this
        process was forked from that parent after it was made, and the maker was the program
        itself. It is not when this process made it (spawn, or an import after a fork), when
        it came by fork from another process than the parent (forkserver: the server, which
        may have imported the module itself), nor when the maker was itself such a process (a
        spawned worker that imported the module and forked).
        """
        pid = os.getpid()
        parent = multiprocessing.parent_process()
        if self.local and parent is not None and (
            not self.top or self._pid == pid or _fork_parent != parent.pid
        ):
            raise ProcThrottleError(
                f"{function} is {self.what} with an anonymous {_kinds(self)} made when this "
                "process (or the process it was forked from: a forkserver, a worker) imported "
                "the function's module, not the one of the program that started it: calls "
                "here, or in processes it sends the function to, would not share that bound. "
                "Send the decorated function itself to this process from the program "
                "(pool.submit(fn, ...), Process(target=fn)): it carries its semaphore and "
                "rate. Or make the bound host-wide by name: @throttle(N, name='...'), "
                "ProcessSemaphore(N, name='...'), RateLimiter(..., name='...')"
            )
        self.checked = forks


#: The process this one was forked from (None: not forked); see `Limits.check_shared`.
_fork_parent: int | None = None
#: Forks since this module was imported: a `Limits` checked before a fork is checked again.
forks = 0


def _after_fork_in_child() -> None:
    global _fork_parent, forks
    _fork_parent = os.getppid()
    forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Throttled(functools.partial):  # type: ignore[type-arg]
    """A ``@throttle``-decorated callable.

    A `functools.partial` of the wrapper function (so `inspect.iscoroutinefunction` sees an
    ``async def`` wrapper through it on every Python version), carrying the wrapped function's
    metadata (``functools.wraps``), binding as a method like a function, and pickling by its
    qualified name together with its semaphore and rate (see the module's doc).
    """

    _limits: Limits

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __copy__(self) -> Throttled:
        return self  # a function is its own copy

    def __deepcopy__(self, memo: dict[int, object]) -> Throttled:
        return self

    def __repr__(self) -> str:
        return f"<throttled {self._where()}>"

    def _where(self) -> str:
        qualname = getattr(self, "__qualname__", None)
        if qualname is None:  # a callable object: it has no name of its own
            return f"{type(self.__wrapped__).__qualname__} object"  # type: ignore[attr-defined]
        return f"function {self.__module__}.{qualname}"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._limits.checked != forks:  # a bound this process never shared is not sent on
            self._limits.check_shared(self._where())
        module, qualname = self.__module__, getattr(self, "__qualname__", None)
        if qualname is None:
            raise pickle.PicklingError(
                f"cannot pickle the @throttle {self._where()}: another process finds a "
                "decorated function by name; decorate a module-level function instead"
            )
        if "<locals>" in qualname or _resolve(module, qualname, importing=False) is not self:
            raise pickle.PicklingError(
                f"cannot pickle the @throttle function {module}.{qualname}: another process "
                "finds it by name, so it must be defined at module level under that name"
            )
        return (_rebind, (module, qualname, self._limits.carry()))


def _rebind(module: str, qualname: str, carried: tuple[bytes | None, bytes | None]) -> Throttled:
    """Unpickle: the function of that name here, using the sender's semaphore and rate."""
    try:
        found = _resolve(module, qualname, importing=True)
    except (ImportError, AttributeError) as exc:
        raise pickle.UnpicklingError(
            f"cannot find the @throttle function {module}.{qualname} in this process ({exc}): "
            "it travels by name, so the receiving process must be able to import it. "
            "multiprocessing workers find the functions of the main script; other tools' "
            "workers (Dask, ...) need it in an importable module"
        ) from exc
    if not isinstance(found, Throttled):
        raise pickle.UnpicklingError(
            f"{module}.{qualname} is not a @throttle function in this process "
            f"({type(found).__name__}): the sender and this process run different code"
        )
    found._limits.adopt(carried)
    return found


def _resolve(module: str, qualname: str, *, importing: bool) -> Any:
    try:
        obj: Any = importlib.import_module(module) if importing else _loaded(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        if importing:
            raise
        return None
    return obj


def _loaded(module: str) -> types.ModuleType:
    import sys

    found = sys.modules.get(module)
    if found is None:
        raise ImportError(module)
    return found


def _dumps(obj: object) -> bytes | None:
    return None if obj is None else pickle.dumps(obj)


def _rate_source(gate: RateGate | None) -> Any:
    """What to send of a rate: the limiter itself (an AsyncRateLimiter's own limiter)."""
    if gate is None:
        return None
    limiter = gate.limiter
    return limiter.limiter if type(limiter) is AsyncRateLimiter else limiter


def _made_here(obj: object) -> bool:
    """Whether ``obj`` is an anonymous semaphore or rate limiter made in this process (or the
    process it was forked from, before the fork), not one received by pickle."""
    return bool(getattr(obj, "_made", False))


def _kinds(limits: Limits) -> str:
    sem = limits.made_sem or _made_here(limits.sem)
    rate = limits.made_rate or _made_here(_rate_source(limits.gate))
    made = (("semaphore", sem), ("rate limiter", rate))
    return " and ".join(kind for kind, mine in made if mine) or "semaphore"
