"""What travels between the pool and its workers: length-prefixed frames over plain pipes.

Parent -> worker: ``seq`` (int64) + pickled ``(fn, args, kwargs)``; ``seq == STOP`` ends the worker.
Worker -> parent: ``seq``, ``kind`` and the task's run time, + a payload: the pickled result, or
an *error blob* that always unpickles (strings, plus the pickled exception when it pickles), so
an exception the parent cannot rebuild still resolves its future with a clear error. Frames
without a task: READY / INIT_FAILED / OPEN_FAILED (the worker started, or its initializer
raised, or it could not open the pool's semaphore or rate limiter), and
SKIPPED (``seq``: the worker read past every task up to it, revoked ones included, and is idle).
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

#: Every frame starts with its length: 8 bytes, so a frame of any size travels (a 4-byte
#: length stopped at 4 GiB, and the struct.error it raised took the pool's manager down).
LENGTH = struct.Struct("!Q")
TASK = struct.Struct("!q")
TASK_HEADER = struct.Struct("!Qq")
RESULT = struct.Struct("!qBd")
STOP = -1
OK, ERROR, READY, INIT_FAILED, SKIPPED, OPEN_FAILED = range(6)
PROTOCOL = pickle.HIGHEST_PROTOCOL
#: A frame longer than this is read straight into a buffer of its own size (no copies).
BIG = 1 << 16
#: Bytes asked for per read of small frames.
READ_SIZE = 1 << 16

Frame = bytes | bytearray


class BadFrame(ValueError):
    """A frame too short for its header: the byte stream is out of step (a bug, never data)."""


def task_seq(body: Frame) -> int:
    """The ``seq`` of a task frame; raises `BadFrame` if the frame cannot hold one."""
    if len(body) < TASK.size:
        raise BadFrame(
            f"procthrottle: a worker received a malformed task frame ({len(body)} bytes, at "
            f"least {TASK.size} expected): its task stream is out of step; the worker exits "
            "and the pool replaces it (please report this as a bug)"
        )
    return int(TASK.unpack_from(body)[0])


def task_header(seq: int, size: int) -> bytes:
    return TASK_HEADER.pack(TASK.size + size, seq)


def result_header(seq: int, kind: int, seconds: float, size: int) -> bytes:
    return LENGTH.pack(RESULT.size + size) + RESULT.pack(seq, kind, seconds)


def result_frame(seq: int, kind: int, seconds: float, payload: bytes) -> bytes:
    return result_header(seq, kind, seconds, len(payload)) + payload


def write_result(fd: int, seq: int, kind: int, seconds: float, payload: bytes) -> None:
    """Blocking write of one result frame (the worker's side); a large payload is written
    from where pickle put it, not copied behind its header."""
    if len(payload) < BIG:
        write_all(fd, result_frame(seq, kind, seconds, payload))
    else:
        write_all(fd, result_header(seq, kind, seconds, len(payload)))
        write_all(fd, payload)


class FrameReader:
    """Split what arrives on a pipe into frames; ``read`` returns the complete ones.

    Small frames arrive many per read and are cut out of it. A large one is read straight into
    a ``bytearray`` of its own size, which is handed out as the frame: the bytes are copied
    once, from the pipe, however large the frame (the old reader grew a buffer, copied it, then
    sliced it: three copies, and a read buffer the size of the frame on top).
    """

    __slots__ = ("big", "buffer", "fd", "filled")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.big: bytearray | None = None  # a large frame being filled in place
        self.filled = 0

    def read(self) -> list[Frame]:
        """One read (blocking, or EAGAIN on a non-blocking fd); raises EOFError at EOF."""
        return self._read_once() or []

    def drain(self) -> list[Frame]:
        """Everything a dead writer left in the pipe (non-blocking fd: stops at EOF or when
        nothing more is there, e.g. a child of the writer still holds the pipe open)."""
        frames: list[Frame] = []
        while True:
            try:
                got = self._read_once()
            except (EOFError, OSError):
                break
            if got is None:
                break
            frames += got
        return frames

    def _read_once(self) -> list[Frame] | None:
        """Complete frames after one read; None when nothing could be read (EAGAIN)."""
        try:
            if self.big is not None:
                return self._fill()
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:  # pragma: no cover - a closed or broken pipe reads as EOF
            if exc.errno in (errno.EBADF, errno.EPIPE, errno.ECONNRESET):
                raise EOFError from exc
            raise
        if not data:
            raise EOFError
        if self.buffer:
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        return self._split(data)

    def _fill(self) -> list[Frame]:
        big = self.big
        assert big is not None
        with memoryview(big) as view:
            n = os.readv(self.fd, [view[self.filled :]])
        if not n:
            raise EOFError
        self.filled += n
        if self.filled < len(big):
            return []
        self.big = None
        return [big]

    def _split(self, data: bytes) -> list[Frame]:
        """Complete frames of ``data`` (one copy each); keep the incomplete tail."""
        frames: list[Frame] = []
        start, end, header = 0, len(data), LENGTH.size
        while end - start >= header:
            (size,) = LENGTH.unpack_from(data, start)
            if end - start - header < size:
                if size > BIG:  # read the rest in place, into a buffer of the frame's size
                    self.big = bytearray(size)
                    part = end - start - header
                    self.big[:part] = data[start + header : end]
                    self.filled = part
                    return frames
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
        # Its chain and traceback are in `tb` now; they stay behind: a process where tblib's
        # pickling support is installed (Dask does) would pickle them too, and the chain holds
        # the exception that could not be pickled.
        problem.__cause__ = problem.__context__ = problem.__traceback__ = None
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
