"""One worker's task pipe, parent side: the frames not yet written, and writing them.

`Outbox` is the one owner of a task pipe's unwritten bytes. Only the manager thread writes, and
never blocks: what the pipe does not take waits, and the pipe's write event (registered here,
only while something waits) resumes it from where the pipe stopped, in any part -- a batch of
small frames copied into one buffer, a header, or a large pickle written from where pickle put
it. It also knows how much memory its pickles hold: a large one counts whole until its last
byte is written (`held`), so the pool can hold back new pickles while old ones wait.
"""

from __future__ import annotations

import itertools
import os
import selectors
from collections import deque
from typing import Any

#: Pickled tasks smaller than this are copied into one buffer per write; larger ones are
#: written from where pickle put them.
SMALL = 1 << 16


class Outbox:
    __slots__ = ("_batch", "fd", "held", "parts", "unwritten", "writing")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parts: deque[bytes | bytearray | memoryview] = deque()
        self.unwritten = 0  # bytes in `parts`
        self.held = 0  # whole size of the large pickles in `parts`
        self.writing = False  # fd is registered for EVENT_WRITE
        self._batch: bytearray | None = None  # the last part, while small frames join it

    def __bool__(self) -> bool:
        return bool(self.parts)

    def memory(self) -> int:
        """Bytes of pickles this pipe keeps alive until it takes them."""
        return max(self.unwritten, self.held)

    def add(self, header: bytes, payload: bytes) -> None:
        """Queue one frame. Small ones are copied into one buffer with their neighbours (one
        part per batch); a large payload stays where pickle put it."""
        if len(payload) < SMALL:
            batch = self._batch
            if batch is None:
                batch = self._batch = bytearray()
                self.parts.append(batch)
            batch += header
            batch += payload
        else:
            self.parts.append(header)
            self.parts.append(payload)
            self.held += len(payload)
            self._batch = None
        self.unwritten += len(header) + len(payload)

    def end_batch(self) -> None:
        """Frames queued from now on start a new part (the last one may be written already)."""
        self._batch = None

    def flush(self, selector: selectors.BaseSelector, data: Any) -> None:
        """Write what the pipe takes now; register for its write event while more waits."""
        parts = self.parts
        self._batch = None
        while parts:
            chunk = list(itertools.islice(parts, 512))
            try:
                written = os.writev(self.fd, chunk)
            except BlockingIOError:
                break
            except OSError:  # the worker is gone; its sentinel tells the rest
                self.clear()
                break
            self.unwritten -= written
            for part in chunk:
                if written >= len(part):
                    written -= len(part)
                    whole = part.obj if isinstance(part, memoryview) else part
                    if type(whole) is bytes and len(whole) >= SMALL:  # a large pickle: freed
                        self.held -= len(whole)
                    parts.popleft()
                else:
                    parts[0] = memoryview(part)[written:]
                    break
            del chunk
        self.watch(selector, data, bool(parts))

    def watch(self, selector: selectors.BaseSelector, data: Any, want: bool) -> None:
        if want != self.writing:
            if want:
                selector.register(self.fd, selectors.EVENT_WRITE, data)
            else:
                selector.unregister(self.fd)
            self.writing = want

    def clear(self) -> None:
        self.parts.clear()
        self.unwritten = self.held = 0
        self._batch = None
