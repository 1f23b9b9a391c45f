"""What travels between the pool and its workers: length-prefixed frames over plain pipes.

Parent -> worker: ``seq`` (int64) + pickled ``(fn, args, kwargs)``; ``seq == STOP`` ends the worker.
Worker -> parent: ``seq``, ``kind`` and the task's run time, + a payload: the pickled result, or
an *error blob* that always unpickles (strings, plus the pickled exception when it pickles), so
an exception the parent cannot rebuild still resolves its future with a clear error.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
import traceback
from concurrent.futures.process import _RemoteTraceback
from typing import Any

from .._exceptions import ProcThrottleError

LENGTH = struct.Struct("!I")
TASK = struct.Struct("!q")
TASK_HEADER = struct.Struct("!Iq")
RESULT = struct.Struct("!qBd")
STOP = -1
OK, ERROR, READY, INIT_FAILED = range(4)
PROTOCOL = pickle.HIGHEST_PROTOCOL


class BadFrame(ValueError):
    """A frame too short for its header: the byte stream is out of step (a bug, never data)."""


def task_seq(body: bytes) -> int:
    """The ``seq`` of a task frame; raises `BadFrame` if the frame cannot hold one."""
    if len(body) < TASK.size:
        raise BadFrame(
            f"procthrottle: a worker received a malformed task frame ({len(body)} bytes, at "
            f"least {TASK.size} expected): its task stream is out of step; the worker exits "
            "and the pool replaces it (please report this as a bug)"
        )
    return int(TASK.unpack_from(body)[0])


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def task_header(seq: int, size: int) -> bytes:
    return TASK_HEADER.pack(TASK.size + size, seq)


def result_frame(seq: int, kind: int, seconds: float, payload: bytes) -> bytes:
    return LENGTH.pack(RESULT.size + len(payload)) + RESULT.pack(seq, kind, seconds) + payload


class FrameReader:
    """Split what arrives on a pipe into frames; ``read`` returns the complete ones."""

    __slots__ = ("buffer", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def read(self) -> list[bytes]:
        """One ``os.read`` (blocking, or EAGAIN on a non-blocking fd); raises EOFError at EOF."""
        want, need = 1 << 16, 0
        if len(self.buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(self.buffer)
            need = LENGTH.size + size
            want = max(want, need - len(self.buffer))
        try:
            data = os.read(self.fd, want)
        except BlockingIOError:
            return []
        except OSError as exc:  # pragma: no cover - a closed or broken pipe reads as EOF
            if exc.errno in (errno.EBADF, errno.EPIPE, errno.ECONNRESET):
                raise EOFError from exc
            raise
        if not data:
            raise EOFError
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < need:  # a large frame still arriving: no copy yet
                return []
            data = bytes(self.buffer)
            self.buffer.clear()
        return self._split(data)

    def drain(self) -> list[bytes]:
        """Everything a dead writer left in the pipe (non-blocking fd: stops at EOF or when
        nothing more is there, e.g. a child of the writer still holds the pipe open)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except OSError:  # EAGAIN, or closed
                break
            if not data:
                break
            self.buffer += data
        data = bytes(self.buffer)
        self.buffer.clear()
        return self._split(data)

    def _split(self, data: bytes) -> list[bytes]:
        """Complete frames of ``data`` (one copy each); keep the incomplete tail."""
        frames = []
        start, end, header = 0, len(data), LENGTH.size
        while end - start >= header:
            (size,) = LENGTH.unpack_from(data, start)
            if end - start - header < size:
                break
            frames.append(data[start + header : start + header + size])
            start += header + size
        if start < end:
            self.buffer += data[start:]
        return frames


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (the worker's side)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


def encode_error(exc: BaseException) -> bytes:
    """An error blob: ``(pickled exception or None, type name, message, formatted traceback)``."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: bytes | None = pickle.dumps(exc, PROTOCOL)
    except BaseException as raised:  # it cannot travel (its __reduce__ may even raise
        # SystemExit): send why, as PPE does, rather than let the worker die of it
        problem = pickling_problem(raised)
        add_note(
            problem,
            f"procthrottle: the task raised {_describe(exc)}, which cannot be pickled back to "
            "the parent process; its traceback follows as the cause",
        )
        tb += "\nWhile pickling that exception:\n" + "".join(
            traceback.format_exception(type(problem), problem, problem.__traceback__)
        )
        try:
            blob = pickle.dumps(problem, PROTOCOL)
        except BaseException:  # pragma: no cover - a pickling error that does not pickle
            blob = None
        exc = problem
    return pickle.dumps((blob, _qualname(exc), _text(exc), tb), PROTOCOL)


def pickling_problem(raised: BaseException) -> BaseException:
    """What to report when pickling raised ``raised``: itself if it is an ``Exception``, else
    (``SystemExit``, ``KeyboardInterrupt``... from a broken ``__reduce__``) a ``PicklingError``
    that names it -- never hand the caller a ``SystemExit`` to raise."""
    if isinstance(raised, Exception):
        return raised
    problem = pickle.PicklingError(f"pickling it raised {type(raised).__name__}: {_text(raised)}")
    problem.__traceback__ = raised.__traceback__
    problem.__context__ = raised
    return problem


def decode_error(data: bytes) -> BaseException:
    """The exception from an error blob, its worker traceback chained as ``__cause__``."""
    blob, name, text, tb = pickle.loads(data)
    cause = _RemoteTraceback(tb)
    problem: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException as err:  # e.g. urllib.error.HTTPError, a multi-argument __init__
            problem = err
        else:
            if isinstance(exc, BaseException):
                exc.__cause__ = cause
                return exc
    rebuilt = ProcThrottleError(
        f"the task raised {name}: {text} -- that exception cannot be rebuilt in this process"
        + ("" if problem is None else f" ({type(problem).__name__}: {problem})")
        + "; its worker traceback is chained as __cause__"
    )
    rebuilt.__cause__ = cause
    return rebuilt


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # pragma: no cover - a broken __str__
        return "<unprintable>"


def _describe(exc: BaseException) -> str:
    return f"{_qualname(exc)}({_text(exc)!r})"


def dumps_task(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call in the parent; a failure keeps its own type, with a hint as a note."""
    try:
        return pickle.dumps((fn, args, kwargs), PROTOCOL)
    except BaseException as raised:
        exc = pickling_problem(raised)
        note_unpicklable(exc, fn)
        raise exc from None


def note_unpicklable(exc: BaseException, fn: Any) -> None:
    add_note(
        exc,
        f"procthrottle: cannot send {getattr(fn, '__qualname__', fn)!r} to a worker process: "
        "it or one of its arguments cannot be pickled. Use module-level functions and "
        "picklable arguments.",
    )


def dumps_result(result: object) -> tuple[int, bytes]:
    """``(OK, pickled result)`` or ``(ERROR, error blob)`` if the result cannot be pickled."""
    try:
        return OK, pickle.dumps(result, PROTOCOL)
    except BaseException as raised:  # even SystemExit from a broken __reduce__
        exc = pickling_problem(raised)
        add_note(
            exc,
            f"procthrottle: the task's result (a {type(result).__qualname__}) cannot be pickled "
            "back to the parent process",
        )
        return ERROR, encode_error(exc)
