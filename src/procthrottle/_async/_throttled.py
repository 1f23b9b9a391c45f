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

A process started by `multiprocessing` that imported the module itself and never received the
function would silently have a bound of its own; its first call of such a function raises
instead (`Limits.check_shared`).
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
    process's pickle replaced it.
    """

    __slots__ = ("_carried", "_checked_pid", "_lock", "_pid", "adapter", "gate", "made_rate",
                 "made_sem", "sem", "what")

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
        self._pid = os.getpid()
        self._checked_pid = 0
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
            self.made_sem = self.made_rate = False
            self._carried = carried

    def _own(self) -> tuple[bytes | None, bytes | None] | None:
        try:
            return self.carry()
        except Exception:  # closed, or cannot travel: not what was sent, whatever it is
            return None

    def check_shared(self, function: str) -> None:
        """Refuse a bound that would silently be this process's own (see the module's doc)."""
        pid = os.getpid()
        if self._checked_pid == pid:
            return
        made = self.made_sem or self.made_rate
        if made and self._pid == pid and multiprocessing.parent_process() is not None:
            raise ProcThrottleError(
                f"{function} is {self.what} with an anonymous {_kinds(self)} that this process "
                "made when it imported the function's module, not the one of the process that "
                "started it: calls here would not share that bound. Send the decorated "
                "function itself to this process (pool.submit(fn, ...), Process(target=fn)): "
                "it carries its semaphore and rate. Or make the bound host-wide by name: "
                "@throttle(N, name='...')"
            )
        self._checked_pid = pid


class Throttled(functools.partial):  # type: ignore[type-arg]
    """A ``@throttle``-decorated callable.

    A `functools.partial` of the wrapper function (so `inspect.iscoroutinefunction` sees an
    ``async def`` wrapper through it on every Python version), carrying the wrapped function's
    metadata (``functools.wraps``), binding as a method like a function, and pickling by its
    qualified name together with its semaphore and rate (see the module's doc).
    """

    _limits: Limits
    __qualname__: str

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __copy__(self) -> Throttled:
        return self  # a function is its own copy

    def __deepcopy__(self, memo: dict[int, object]) -> Throttled:
        return self

    def __repr__(self) -> str:
        return f"<throttled function {self.__module__}.{self.__qualname__}>"

    def __reduce__(self) -> tuple[Any, ...]:
        module, qualname = self.__module__, self.__qualname__
        if "<locals>" in qualname or _resolve(module, qualname, importing=False) is not self:
            raise pickle.PicklingError(
                f"cannot pickle the @throttle function {module}.{qualname}: another process "
                "finds it by name, so it must be defined at module level under that name"
            )
        return (_rebind, (module, qualname, self._limits.carry()))


def _rebind(module: str, qualname: str, carried: tuple[bytes | None, bytes | None]) -> Throttled:
    """Unpickle: the function of that name here, using the sender's semaphore and rate."""
    found = _resolve(module, qualname, importing=True)
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


def _kinds(limits: Limits) -> str:
    made = (("semaphore", limits.made_sem), ("rate limiter", limits.made_rate))
    return " and ".join(kind for kind, mine in made if mine)
