"""``RateLimiter``: at most ``rate`` acquisitions per ``per`` seconds, across processes."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from multiprocessing.util import Finalize
from typing import Any

from .._exceptions import SemaphoreClosedError
from .._kernel._validate import DEFAULT_MODE, check_mode, check_name

try:
    from . import _store as shared
    from ._anonymous import create_anonymous, open_anonymous

    _UNAVAILABLE: str | None = None
except (ImportError, OSError, TypeError, AttributeError) as exc:  # pragma: no cover - Windows
    _UNAVAILABLE = (
        "RateLimiter needs System V semaphores (Linux, macOS), which this platform lacks "
        f"({type(exc).__name__}: {exc}); use procthrottle.redis.RedisRateLimiter instead"
    )
from . import _clock, _window
from ._base import RateLimits, Reservation, max_wait_ns
from ._layout import MAX_COUNT, MAX_QUOTAS, Layout, differences, max_set_size
from ._parse import check_burst, check_extra, check_n, interval_ns, quotas_ns, rate_pair

_live: weakref.WeakSet[RateLimiter] = weakref.WeakSet()
_anonymous: weakref.WeakValueDictionary[int, RateLimiter] = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    # SEM_UNDO adjustments are not inherited: the child has attached to nothing. It attaches
    # when it first uses an inherited limiter, and never runs the parent's detach finalizers.
    for limiter in list(_live):
        limiter._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RateLimiter(RateLimits):
    """At most `rate` acquisitions per `per` seconds, shared by processes.

    The limit holds for every process using the limiter: children it was passed to (under
    fork, spawn and forkserver, including as an argument of `ProcessPoolExecutor.submit`),
    or, with a `name`, every process of this user on the host. Over any window of `W`
    seconds at most `burst + rate * W / per` acquisitions (counted with their weight `n`) are
    admitted. Window quotas may be added with `extra`: `RateLimiter("10/s", extra=[(100,
    60)])` admits at most 10 per second and at most 100 in any 60 seconds, at 10/s until
    the minute's 100 are used.

    The state (the main rate's theoretical arrival time, GCRA, and each quota's last
    admissions) is kept in a System V semaphore set, updated by an atomic compare-and-swap:
    there is no lock, so a process killed at any instant neither corrupts the state nor
    blocks the others. An acquisition reserves the next free slot and sleeps until it, so
    waiters are served in the order they arrived.

    Args:
        rate: How many acquisitions per `per` seconds, as a number > 0, or a string such as
            `"10/s"`, `"600/min"`, `"5000/h"` (then leave `per` at its default).
        per: The period of `rate` in seconds.
        burst: How many acquisitions of the main rate may be admitted at once after an idle
            period (>= 1).
        name: Share the limiter host-wide under this name (1 to 200 characters of
            `[A-Za-z0-9._-]`), with the naming and ownership rules of `ProcessSemaphore`:
            processes creating or opening it concurrently always meet on one limiter,
            whatever the timing or a creator's stall or death. Opening an existing name with
            other rates or another burst raises `ValueError`; so does a name a semaphore has
            (a `ValueError` that is also a `FileExistsError`).
        extra: Window quotas, as `(count, per)` pairs or rate strings (`"100/min"`): at most
            `count` acquisitions in any `per` seconds, its burst being its count (up to 7
            quotas; a count is rounded down to a whole number).
        mode: Permission bits of a new named limiter (default `0o600`, owner-only). An
            existing name owned by another user is used only if `mode` grants the same
            sharing (`0o660`: a group the caller is in; `0o666`: everyone).

    Raises:
        TypeError: An argument of the wrong type (bools are refused as numbers).
        ValueError: A rate or period that is not a finite number > 0, an unparseable rate
            string, `burst < 1`, a bad `mode`, or a name that exists with other rates or as
            a semaphore.
        PermissionError: `name` belongs to another user and `mode` does not share it.
    """

    __slots__ = (
        "__weakref__",
        "_attached",
        "_burst",
        "_cache",
        "_closed",
        "_finalizer",
        "_layout",
        "_made",
        "_mode",
        "_name",
        "_pairs",
        "_quota",
        "_single",
        "_store",
    )

    _store: shared.RateSet
    _finalizer: Finalize | None

    def __init__(
        self,
        rate: float | str,
        per: float = 1.0,
        *,
        burst: int = 1,
        name: str | None = None,
        extra: Sequence[tuple[float, float] | str] = (),
        mode: int = DEFAULT_MODE,
    ) -> None:
        pairs = [rate_pair(rate, per), *check_extra(extra)]
        burst = check_burst(burst)
        name = check_name(name)
        mode = check_mode(mode)
        if _UNAVAILABLE is not None:  # pragma: no cover - Windows
            raise NotImplementedError(_UNAVAILABLE)
        layout = make_layout(pairs, burst)
        self._configure(pairs, layout, name)
        self._mode = mode
        if name is None:
            store = create_anonymous(layout)
        else:
            store, header = shared.open_or_create_named(name, layout, mode)
            assert header.layout is not None  # a half-made set was refused
            if header.layout.key != layout.key:
                raise ValueError(self._mismatch(name, header.layout))
        self._setup(store, attached=name is None)
        self._made = name is None

    def _configure(
        self, pairs: list[tuple[float, float]], layout: Layout, name: str | None
    ) -> None:
        self._pairs, self._burst, self._layout, self._name = pairs, layout.burst, layout, name
        self._single = 0 if layout.quotas else layout.interval
        self._quota = min((count for count, _ in layout.quotas), default=None)
        self._cache: list[int] | None = None
        self._closed: str | None = None
        self._attached = False
        self._finalizer = None
        self._made = False  # an anonymous limiter made here, not received (see ProcessSemaphore)

    def _mismatch(self, name: str, theirs: Layout) -> str:
        return (
            f"rate limiter {name!r} already exists with other limits: "
            f"{'; '.join(differences(theirs, self._layout))}. Open it with the same rate, "
            f"burst and extra, or unlink it first"
        )

    def _setup(self, store: shared.RateSet, *, attached: bool = False) -> None:
        self._store = store
        self._attach(attached=attached)
        if self._name is None:
            _anonymous[store.semid] = self

    def _attach(self, *, attached: bool = False) -> None:
        if not attached:  # a new anonymous set comes attached
            self._store.attach()
        self._attached = True
        _live.add(self)
        self._finalizer = Finalize(
            self, shared.detach, args=(self._store.semid, self._name is None), exitpriority=10
        )

    def _forked(self) -> None:
        if self._finalizer is not None:
            self._finalizer.cancel()
        self._finalizer = None
        self._attached = False

    # -- reservations --------------------------------------------------------------------
    def _now_ns(self) -> int:
        """Now on the host's monotonic clock, which the shared state keeps (`_clock`)."""
        return _clock.now_ns()

    def _reserve(self, n: int, max_wait: int | None) -> Reservation | None:
        """Reserve a slot for ``n`` unless it is more than ``max_wait`` ns away (None: any)."""
        if not self._attached:
            if self._closed is not None:
                raise SemaphoreClosedError(self._closed)
            self._attach()
        store = self._store
        tats = self._cache
        fresh = tats is None
        burst = self._burst
        interval = self._single
        if interval:  # the main rate alone: the GCRA of _window.reserve, inlined
            while True:
                if tats is None:
                    tats = store.read()
                    fresh = True
                tat = tats[0]
                now = _clock.now_ns()
                slot = (tat if tat > now else now) + (n - burst) * interval
                if slot < now:
                    slot = now
                if max_wait is not None and slot - now > max_wait:
                    if not fresh:  # our cached view may be stale (a reservation given back)
                        tats = None
                        continue
                    return None
                after = (tat if tat > slot else slot) + n * interval
                if store.cas1(tat, after):
                    new = [after]
                    self._cache = new
                    return slot, tats, new
                tats = None
        layout = self._layout
        while True:  # with window quotas: read everything, every time
            values = store.read_values()
            now = _clock.now_ns()
            slot, old, new = _window.reserve(values, layout, now, n)
            if max_wait is not None and slot - now > max_wait:
                return None
            if store.swap_pairs(old, new):
                return slot, old, new

    def _take_now(self, n: int) -> bool:
        """Admit ``n`` now if this process's last view says so: one system call, no sleep.

        False means "not now, or not sure": the caller goes the full way (`_reserve`).
        """
        tats = self._cache
        interval = self._single
        if tats is None or not interval or not self._attached:
            return self._closed is None and self._reserve(n, 0) is not None
        tat = tats[0]
        now = _clock.now_ns()
        base = tat if tat > now else now
        if base + (n - self._burst) * interval > now:
            return False
        after = base + n * interval  # the slot is now
        if self._store.cas1(tat, after):
            self._cache = [after]
            return True
        return False

    def _give_back(self, reservation: Reservation) -> bool:
        """Undo a reservation if none was made after it; True if it was undone."""
        if self._closed is not None:
            return False
        _, before, after = reservation
        try:
            if self._single:
                undone = self._store.swap(after, before)
            else:
                return self._store.swap_pairs(after, before)
        except (SemaphoreClosedError, OSError):
            return False
        if undone:
            self._cache = before
        return undone

    def _check_n(self, n: object) -> int:
        quota = self._quota
        if isinstance(n, int) and n.__class__ is int and 1 <= n <= self._burst:  # noqa: SIM102
            if quota is None or n <= quota:
                return n
        return check_n(n, self._burst, self._quota)

    # -- public ----------------------------------------------------------------------------
    def acquire(self, n: int = 1, *, block: bool = True, timeout: float | None = None) -> bool:
        """Take `n` units of the rate, sleeping until they are allowed.

        Args:
            n: The weight of this acquisition, 1 to `burst`.
            block: With False, return False at once unless the units are allowed now.
            timeout: The longest wait in seconds (None: no limit; negative: do not wait).

        Returns:
            True once admitted; False, reserving nothing, when the wait would be longer than
            `timeout` or `block` is False and the units are not allowed now.

        Raises:
            SemaphoreClosedError: The limiter was closed, or unlinked from the host.
        """
        n = self._check_n(n)
        max_wait = max_wait_ns(block, timeout)
        if self._closed is not None:
            raise SemaphoreClosedError(self._closed)
        if self._take_now(n):
            return True
        reservation = self._reserve(n, max_wait)
        return reservation is not None and self._sleep_until(reservation)

    @property
    def name(self) -> str | None:
        """The host-wide name, or None for an anonymous limiter."""
        return self._name

    def close(self) -> None:
        """Drop this process's handle (an anonymous limiter goes with its last handle)."""
        if self._closed is not None:
            return
        self._closed = "the rate limiter was closed in this process"
        _live.discard(self)
        self._attached = False
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def unlink(self) -> None:
        """Remove the limiter from the host, then close it; other handles then fail."""
        if self._closed is None:
            self._store.remove()
            if self._name is not None:
                from .._kernel import _registry

                _registry.discard(self._name, _registry.RATE)
        self.close()

    def __repr__(self) -> str:
        extra = f", extra={list(self.extra)}" if len(self._pairs) > 1 else ""
        name = f", name={self._name!r}" if self._name is not None else ""
        state = ", closed" if self._closed is not None else ""
        burst = f"burst={self._burst}"
        return f"RateLimiter({self.rate:g}, per={self.per:g}, {burst}{extra}{name}{state})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed is not None:
            raise SemaphoreClosedError("cannot pickle a closed rate limiter")
        if self._name is not None:
            return (_open_named, (self._name, self._pairs, self._burst, self._mode))
        return (_open_anonymous, (self._store.key, self._pairs, self._burst))


def _open_named(
    name: str, pairs: list[tuple[float, float]], burst: int, mode: int = DEFAULT_MODE
) -> RateLimiter:
    """Unpickling joins the name the sender had open: a name removed from the host since it
    was sent is an error here, not a second limiter of that name with a rate of its own."""
    if shared.find_named(name) is None:
        raise SemaphoreClosedError(
            f"the rate limiter {name!r} sent to this process was removed from the host "
            "(unlinked) since: open it again by name in the sender, or send the new one"
        )
    return RateLimiter(*pairs[0], burst=burst, name=name, extra=pairs[1:], mode=mode)


def make_layout(pairs: list[tuple[float, float]], burst: int) -> Layout:
    """The layout of a limiter of these rates: the first is the main rate, the others quotas.

    Raises:
        ValueError: A rate out of range, too many quotas, or quotas too large for one set.
    """
    if len(pairs) > 1 + MAX_QUOTAS:
        raise ValueError(f"at most {MAX_QUOTAS} extra rates per limiter, got {len(pairs) - 1}")
    layout = Layout(burst, interval_ns(*pairs[0], burst), quotas_ns(pairs[1:], MAX_COUNT))
    limit = max_set_size()
    if limit is not None and layout.nsems > limit:
        raise ValueError(
            f"the window quotas of extra={pairs[1:]} need {layout.nsems} semaphores in one "
            f"set and this kernel allows {limit} (SEMMSL): a quota keeps its last `count` "
            "admissions (6 semaphores each); use smaller counts over shorter periods"
        )
    return layout


def _open_anonymous(key: int, pairs: list[tuple[float, float]], burst: int) -> RateLimiter:
    """The limiter with this key, attached on first use (one handle per process)."""
    layout = make_layout(pairs, burst)
    store = open_anonymous(key, layout)
    existing = _anonymous.get(store.semid)
    if existing is not None and existing._closed is None:
        return existing
    self = object.__new__(RateLimiter)
    self._configure(list(pairs), layout, None)
    self._mode = DEFAULT_MODE
    self._store = store  # attached when first used, after a spawned child's bootstrap
    _live.add(self)
    _anonymous[store.semid] = self
    return self
