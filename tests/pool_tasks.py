"""Module-level tasks for pool tests (spawned workers import them by name)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from procthrottle import critical_section

_INIT_VALUE: str | None = None


def record(path: str, tag: str, start: float) -> None:
    with open(path, "a") as f:  # short appends: lines never interleave
        f.write(f"{tag} {os.getpid()} {start} {time.monotonic()}\n")


def hold(path: str, seconds: float, value: int = 0) -> int:
    start = time.monotonic()
    time.sleep(seconds)
    record(path, "task", start)
    return value


def with_section(path: str, outside: float, inside: float) -> int:
    start = time.monotonic()
    time.sleep(outside)
    with critical_section():
        s = time.monotonic()
        time.sleep(inside)
        record(path, "section", s)
    time.sleep(outside)
    record(path, "task", start)
    return os.getpid()


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise KeyError(message)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_abruptly(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def init(value: str) -> None:
    global _INIT_VALUE
    _INIT_VALUE = value


def init_value_and_pid() -> tuple[str | None, int]:
    time.sleep(0.01)
    return _INIT_VALUE, os.getpid()


def unpicklable_result() -> object:
    return threading.Lock()


def use_critical_section() -> bool:
    with critical_section():
        return True


def many_sections(seconds: float) -> int:
    """Enter and leave critical_section() for ``seconds``: a kill lands anywhere in it."""
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        with critical_section():
            count += 1
    return count


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# -- failure paths (tests/test_pool_*.py) -------------------------------------------------------


def count_start(path: str, value: int, seconds: float = 0.0) -> int:
    """Append one line per start through O_APPEND (atomic for short writes), then work."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{value} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return value


def starts(path: str) -> list[int]:
    """The values recorded by count_start, one per start."""
    try:
        with open(path) as f:
            return [int(line.split()[0]) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def count_then_sigkill(path: str, value: int) -> None:
    count_start(path, value)
    os.kill(os.getpid(), signal.SIGKILL)


class KillsWhilePickled:
    """A result whose pickling kills the worker (a crash while sending the result)."""

    def __reduce__(self) -> tuple[object, ...]:
        os._exit(7)


def count_then_bad_result(path: str, value: int) -> KillsWhilePickled:
    count_start(path, value)
    return KillsWhilePickled()


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: unpickling calls TwoArgError(message) with one arg."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


def raise_two_arg_error() -> None:
    raise TwoArgError(404, "not here")


def raise_http_error() -> None:
    import email.message
    import urllib.error

    raise urllib.error.HTTPError(
        "http://example.invalid/x", 404, "Not Found", email.message.Message(), None
    )


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    raise UnpicklableError("holds a lock")


class ExitsWhenPickled(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit("no pickling this")


def raise_error_that_exits_when_pickled() -> None:
    raise ExitsWhenPickled("mine")


def failing_init(message: str) -> None:
    raise ValueError(message)


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Box:
    """A result the test can hold a weak reference to."""

    def __init__(self, value: int) -> None:
        self.value = value


def box(value: int) -> Box:
    return Box(value)


def fail_at(value: int, bad: int) -> int:
    if value == bad:
        raise ValueError(f"item {value}")
    time.sleep(0.05)
    return value


class CountingGate:
    """A stand-in rate limiter: acquire() records a line; lets everything through."""

    def __init__(self, path: str) -> None:
        self.path = path

    def acquire(self) -> bool:
        count_start(self.path, -1)
        return True


def section_then_value(value: int) -> int:
    with critical_section():
        pass
    with critical_section():
        pass
    return value


def run_script(code: str, timeout: float = 60, **popen: object) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports procthrottle and these tasks; a hang
    fails the test (TimeoutExpired) instead of blocking the suite."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_SRC, _TESTS, env.get("PYTHONPATH", "")])
    done: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False, **popen,
    )
    return done


_TESTS = os.path.dirname(os.path.abspath(__file__))
_SRC = os.path.join(os.path.dirname(_TESTS), "src")


class _SlowClaimClock:
    """Stands in for the worker's `time` module: each claim (which reads monotonic_ns under the
    worker's claim lock) records this pid in ``marker`` and then stalls, widening the window
    between "the worker decides to run a task" and "the parent sees the claim"."""

    def __init__(self, marker: str, seconds: float) -> None:
        self.marker, self.seconds = marker, seconds

    def monotonic_ns(self) -> int:
        count_start(self.marker, os.getpid())
        time.sleep(self.seconds)
        return time.monotonic_ns()

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def slow_claims(marker: str, seconds: float) -> None:
    """Pool initializer: every claim in this worker stalls ``seconds`` inside the claim lock."""
    from procthrottle._pool import _worker

    setattr(_worker, "time", _SlowClaimClock(marker, seconds))  # noqa: B010


def echo(value: object) -> object:
    return value


def noop() -> None:
    return None


class ExitsWhenPickledResult:
    """A result whose pickling raises SystemExit (a broken __reduce__)."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit("no pickling this result")


def result_that_exits_when_pickled() -> ExitsWhenPickledResult:
    return ExitsWhenPickledResult()


class ExitsWhenPickledArg:
    """An argument whose pickling raises SystemExit in the parent."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit("no pickling this argument")
