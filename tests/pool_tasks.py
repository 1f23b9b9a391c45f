"""Module-level tasks for pool tests (spawned workers import them by name)."""

from __future__ import annotations

import ctypes
import os
import signal
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
