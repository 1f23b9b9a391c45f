"""The parent -> worker task stream stays in step: nothing but `_flush` writes into a task pipe,
partial writes resume where they stopped, and a malformed frame is reported, not a bare crash.

The bug these pin down: a finished pool's late wake-up (``shutdown()`` again, or its finalizer
when the pool object is collected) wrote its zero byte to the number of its closed wake-up pipe,
which by then could be another pool's task pipe. The worker behind it read ``00 00 00 00`` as
the next frame's length: a zero-length frame, and ``struct.error`` killed it.
"""

from __future__ import annotations

import fcntl
import gc
import itertools
import logging
import os
import time
import zlib
from concurrent.futures import Future
from typing import Any

import pytest

import pool_tasks as tasks
from procthrottle import ThrottledProcessPool
from procthrottle._pool import _lifecycle, _records, _wire, _worker

pytestmark = pytest.mark.timeout(120)


def _dup_onto(fd: int, number: int) -> list[int]:
    """Duplicate ``fd`` onto the lowest free numbers until one lands on ``number`` (which must be
    free); returns every duplicate made, the one on ``number`` last."""
    made: list[int] = []
    while True:
        new = os.dup(fd)
        made.append(new)
        if new >= number:
            assert new == number, f"descriptor {number} is not free"
            return made


def test_a_finished_pool_writes_nothing_into_a_reused_descriptor() -> None:
    pool = ThrottledProcessPool(1, 1)
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9
    number = pool._engine.wake_w
    pool.shutdown()
    r, w = os.pipe()
    os.set_blocking(r, False)
    made = _dup_onto(w, number)  # `number` now writes into our pipe, as a new pool's would
    try:
        pool.shutdown()  # again: wakes nobody
        del pool
        gc.collect()  # the pool's finalizer: request_stop()
        try:
            stray = os.read(r, 64)
        except BlockingIOError:
            stray = b""
        assert stray == b"", "the finished pool wrote into a descriptor it no longer owns"
    finally:
        for fd in (r, w, *made):
            os.close(fd)


def test_a_late_wake_up_does_not_derail_another_pools_worker() -> None:
    """End to end, in a child: pool B's worker task pipe gets the number of pool A's closed
    wake-up pipe; then A's finalizer runs. B's worker must not see a stray byte."""
    done = tasks.run_script(
        """
        import gc, os
        import pool_tasks as tasks
        from procthrottle import ThrottledProcessPool

        null = os.open(os.devnull, os.O_RDONLY)
        padding = [os.dup(null) for _ in range(32)]  # so that A's descriptors come high
        a = ThrottledProcessPool(1, 1)
        assert a.submit(tasks.square, 3).result(timeout=30) == 9
        number = a._engine.wake_w
        a.shutdown()
        for fd in padding:
            os.close(fd)
        for before in range(16):  # how many descriptors B opens before its first task pipe
            below = []
            while (new := os.dup(null)) < number:
                below.append(new)
            os.close(new)
            for fd in below[len(below) - before :]:
                os.close(fd)  # exactly `before` free numbers below `number`
            b = ThrottledProcessPool(1, 1)
            if b._engine.workers[0].task_fd == number:
                break
            b.shutdown()
            for fd in below[: len(below) - before]:
                os.close(fd)
        else:
            raise SystemExit("could not put a task pipe on the wake-up pipe's number")
        assert b.submit(tasks.square, 2).result(timeout=30) == 4  # its worker is ready
        del a
        gc.collect()  # A's finalizer: request_stop() and its wake-up
        values = [f.result(timeout=30) for f in [b.submit(tasks.square, i) for i in range(50)]]
        assert values == [i * i for i in range(50)], values
        stats = b.stats()
        assert stats["crashed"] == 0 and stats["workers_started"] == 1, stats
        b.shutdown()
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "Traceback" not in done.stderr, done.stderr


def test_partial_writes_of_mixed_frames_keep_the_stream_in_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One-page task pipes: most writes are partial, cutting through small-task blobs, headers
    and large payloads alike; cancellations and steals revoke tasks whose frames are queued."""
    monkeypatch.setattr(_lifecycle, "PIPE_SIZE", 4096)
    big = _records.SMALL + 12345
    sizes = [big if i % 3 == 0 else (i * 37) % 900 + 1 for i in range(300)]
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    with ThrottledProcessPool(2, 2) as pool:
        assert [fcntl.fcntl(w.task_fd, fcntl.F_GETPIPE_SZ) for w in pool._engine.workers] == [
            4096,
            4096,
        ]
        futures: list[tuple[Future[Any], bytes | None]] = []
        for i, data in enumerate(payloads):
            futures.append((pool.submit(zlib.crc32, data), data))
            if i % 20 == 0:  # a slow one: the idle worker steals what waits behind it
                futures.append((pool.submit(time.sleep, 0.05), None))
        cancelled = 0
        for future, _ in itertools.islice(futures, 150, None, 7):
            cancelled += future.cancel()
        for future, sent in futures:
            if future.cancelled():
                continue
            expected = None if sent is None else zlib.crc32(sent)
            assert future.result(timeout=60) == expected
        stats = pool.stats()
    assert stats["crashed"] == 0
    assert stats["workers_started"] == 2
    assert stats["completed"] + stats["cancelled"] == len(futures)
    assert stats["cancelled"] == cancelled


def test_a_malformed_task_frame_ends_the_worker_with_a_clear_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ThrottledProcessPool(1, 1) as pool, caplog.at_level(logging.WARNING, "procthrottle"):
        assert pool.submit(tasks.square, 3).result(timeout=30) == 9
        worker = pool._engine.workers[0]
        os.write(worker.task_fd, _wire.LENGTH.pack(0))  # a zero-length frame: no room for a seq
        deadline = time.monotonic() + 30  # the manager thread reaps it (no join here: it races)
        while pool.stats()["workers_started"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not worker.process.is_alive()
        assert pool.submit(tasks.square, 4).result(timeout=30) == 16  # on its replacement
        stats = pool.stats()
    assert stats["workers_started"] == 2
    assert stats["crashed"] == 0
    exited = f"exited with code {_worker.EXIT_BAD_FRAME}: it received a malformed task frame"
    assert any(exited in r.getMessage() for r in caplog.records), caplog.text
