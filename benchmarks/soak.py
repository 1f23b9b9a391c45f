"""Soak: every part of procthrottle at once, under chaos, then the invariants checked.

    python benchmarks/soak.py [--seconds 60] [--limit 3] [--json summary.json]

For ``--seconds`` these all share one named, crash-safe semaphore of ``--limit`` permits:

* sync holders in several processes (random holds and timeouts), SIGKILLed at random and
  restarted;
* async holders: processes running many asyncio tasks through one ``AsyncSemaphore``, with
  random cancellations and timeouts;
* a ``ThrottledProcessPool`` in task mode and one in section mode (``critical_section()``),
  whose workers are SIGKILLed at random while they run a task;
* ``procthrottle run`` commands from the shell;
* and, beside them, a second named semaphore that is created, used, unlinked and created again.

Every holder appends ``<kind> <pid> <start> <end>`` (CLOCK_MONOTONIC, shared by all processes)
to one log opened with ``O_APPEND`` while it holds the permit; a holder killed while holding
gets the kill's time as its end (a lower bound of when the kernel took the permit back, so
the check below can miss an overlap inside that window but never invents one). At the end the
soak asserts, and exits 1 on the first that fails:

1. the largest number of simultaneous holders never exceeded ``--limit``;
2. the semaphore's value is back at its limit;
3. every pool task is accounted for exactly once: completed (and started exactly once),
   failed with ``WorkerCrashedError`` (at most one per worker the soak killed) or cancelled;
4. no System V set, ``/dev/shm`` file or process of the run is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

from procthrottle import (
    AsyncSemaphore,
    ProcessSemaphore,
    SemaphoreClosedError,
    ThrottledProcessPool,
    WorkerCrashedError,
    critical_section,
)

PR_SET_CHILD_SUBREAPER = 36


def _append(log: str, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _hold(log: str, kind: str, seconds: float) -> None:
    """Record one interval of holding the permit (called while holding it)."""
    start = time.monotonic()
    _append(log, f"start {kind} {os.getpid()} {start:.6f}\n")
    time.sleep(seconds)
    _append(log, f"end {kind} {os.getpid()} {time.monotonic():.6f}\n")


# -- participants (module level: they run in spawned or forked processes) ------------------


def sync_holder(name: str, limit: int, log: str, seed: int) -> None:
    rng = random.Random(seed)
    sem = ProcessSemaphore(limit, name=name)
    while True:
        if sem.acquire(timeout=rng.choice([None, 0.0, 0.01, 0.2])):
            try:
                _hold(log, "sync", rng.uniform(0, 0.01))
            finally:
                sem.release()


def async_holder(name: str, limit: int, log: str, seed: int) -> None:
    rng = random.Random(seed)
    asem = AsyncSemaphore(ProcessSemaphore(limit, name=name))

    async def one() -> None:
        async with asem:
            _hold(log, "async", rng.uniform(0, 0.005))

    async def main() -> None:
        while True:
            tasks = [asyncio.ensure_future(one()) for _ in range(rng.randint(5, 40))]
            for task in rng.sample(tasks, len(tasks) // 3):
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.02), task.cancel)
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(task, timeout=rng.choice([0.005, 0.05, 1.0]))

    asyncio.run(main())


def cycler(name: str, seed: int) -> None:
    """Create, use, unlink and create again a second named semaphore."""
    rng = random.Random(seed)
    while True:
        sem = ProcessSemaphore(1, name=name)
        try:
            for _ in range(rng.randint(1, 20)):
                if sem.acquire(timeout=0.01):
                    sem.release()
            sem.unlink()
        except (SemaphoreClosedError, FileNotFoundError, ValueError):
            pass  # another cycler unlinked it first: expected
        finally:
            sem.close()


def pool_task(i: int, log: str, starts: str, hold: float) -> int:
    _append(starts, f"{i} {os.getpid()}\n")
    _hold(log, "pool-task", hold)
    return i


def section_task(i: int, log: str, starts: str, hold: float) -> int:
    _append(starts, f"{i} {os.getpid()}\n")
    time.sleep(hold / 2)  # outside the section: unbounded
    with critical_section():
        _hold(log, "pool-section", hold)
    return i


def cli_command(log: str) -> list[str]:
    script = (
        "import os, sys, time; sys.path[:0] = [sys.argv[1]];"
        "from soak import _hold; _hold(sys.argv[2], 'cli', 0.01)"
    )
    return [sys.executable, "-c", script, str(Path(__file__).parent), log]


# -- the supervisor -------------------------------------------------------------------------


class Soak:
    def __init__(self, seconds: float, limit: int, workdir: Path) -> None:
        self.seconds, self.limit = seconds, limit
        self.run = uuid.uuid4().hex[:10]
        self.name = f"pt-soak-{self.run}"
        self.cycled = f"pt-soak-{self.run}-cycled"
        self.log = str(workdir / "intervals.log")
        self.starts = str(workdir / "starts.log")
        self.rng = random.Random(int(self.run, 16))
        self.kills: Counter[str] = Counter()
        self.kill_times: dict[int, list[float]] = {}  # pid -> when we sent it SIGKILL
        self.pids: set[int] = {os.getpid()}  # every process of the run we know of
        self.deaths: list[str] = []  # participants that died without being killed
        self.ctx = __import__("multiprocessing").get_context("spawn")

    def start(self, target: Any, *args: Any) -> Any:
        process = self.ctx.Process(target=target, args=args, daemon=True)
        process.start()
        self.pids.add(process.pid)
        return process

    def kill(self, pid: int, what: str) -> None:
        """SIGKILL ``pid``; the first kill after a hold's start ends that hold (see _intervals).

        Every kill is recorded, with its time: a pid can be killed again when it is already
        dead (not reaped yet), or reused by a new process over a long run.
        """
        stamp = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.kill_times.setdefault(pid, []).append(stamp)
            self.kills[what] += 1

    def go(self) -> dict[str, Any]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the run come back to us
        sem = ProcessSemaphore(self.limit, name=self.name)
        sysv_before = _sysv_ids()
        shm_before = set(os.listdir("/dev/shm"))
        holders = [self.start(sync_holder, self.name, self.limit, self.log, i) for i in range(3)]
        holders += [self.start(async_holder, self.name, self.limit, self.log, 10 + i)
                    for i in range(2)]
        cyclers = [self.start(cycler, self.cycled, 20 + i) for i in range(2)]
        outcomes: Counter[str] = Counter()
        futures: dict[int, Future[Any]] = {}
        cli: list[subprocess.Popen[bytes]] = []
        try:
            self.chaos(sem, holders, cyclers, cli, futures)
        except BaseException:  # the run itself failed: leave no named object behind
            for name in (self.name, self.cycled):
                with contextlib.suppress(Exception):
                    ProcessSemaphore.open(name).unlink()
            raise
        finally:
            for process in holders + cyclers:
                self.kill(process.pid, "at the end")
                process.join()
            for popen in cli:
                popen.wait()
        for future in futures.values():
            try:
                future.result(timeout=60)
                outcomes["completed"] += 1
            except CancelledError:
                outcomes["cancelled"] += 1
            except WorkerCrashedError:
                outcomes["crashed"] += 1
            except Exception as exc:  # counted and reported by check()
                outcomes[f"failed: {type(exc).__name__}: {exc}"] += 1
        return self.check(sem, futures, outcomes, sysv_before, shm_before)

    def watch(self, holders: list[Any], cyclers: list[Any]) -> None:
        """Note and restart a participant that died on its own (an error inside the library)."""
        for group, target in ((holders, None), (cyclers, cycler)):
            for n, process in enumerate(group):
                if process.exitcode is not None and process.pid not in self.kill_times:
                    self.deaths.append(f"{process.name} exited with {process.exitcode}")
                    role = target or (sync_holder if n < 3 else async_holder)
                    args = (self.cycled,) if role is cycler else (self.name, self.limit, self.log)
                    group[n] = self.start(role, *args, self.rng.randrange(1 << 30))

    def chaos(self, sem: ProcessSemaphore, holders: list[Any], cyclers: list[Any],
              cli: list[subprocess.Popen[bytes]], futures: dict[int, Future[Any]]) -> None:
        """Submit, cancel, run commands and kill at random until the time is up."""
        deadline = time.monotonic() + self.seconds
        with (
            ThrottledProcessPool(3, semaphore=sem, mp_context=self.ctx) as task_pool,
            ThrottledProcessPool(3, semaphore=sem, throttle="section",
                                 mp_context=self.ctx) as section_pool,
        ):
            i = 0
            while time.monotonic() < deadline:
                for pool, fn in ((task_pool, pool_task), (section_pool, section_task)):
                    for _ in range(self.rng.randint(1, 8)):
                        hold = self.rng.choice([0.0, 0.001, 0.005, 0.02])
                        futures[i] = pool.submit(fn, i, self.log, self.starts, hold)
                        i += 1
                for _ in range(3):
                    futures[self.rng.randrange(i)].cancel()
                cli[:] = [p for p in cli if p.poll() is None]
                if len(cli) < 3:
                    cli.append(subprocess.Popen(
                        [sys.executable, "-m", "procthrottle", "run", "--name", self.name,
                         "--limit", str(self.limit), "--", *cli_command(self.log)]))
                    self.pids.add(cli[-1].pid)
                self.watch(holders, cyclers)
                roll = self.rng.random()
                if roll < 0.15:
                    victim = self.rng.randrange(len(holders))
                    self.kill(holders[victim].pid, "sync/async holder")
                    holders[victim].join()
                    target = sync_holder if victim < 3 else async_holder
                    holders[victim] = self.start(target, self.name, self.limit, self.log,
                                                 self.rng.randrange(1 << 30))
                elif roll < 0.3:
                    pid = self._running_worker()
                    if pid is not None:
                        self.kill(pid, "pool worker")
                elif roll < 0.35 and cli:
                    self.kill(cli[-1].pid, "cli")
                time.sleep(self.rng.uniform(0.01, 0.1))

    def _running_worker(self) -> int | None:
        """A pool worker that has just started a task, from the tail of the starts log."""
        try:
            lines = Path(self.starts).read_text().splitlines()[-4:]
        except FileNotFoundError:
            return None
        pids = [int(row[1]) for row in map(str.split, lines) if len(row) == 2]
        pids = [pid for pid in pids if pid not in self.kill_times]
        return self.rng.choice(pids) if pids else None

    def check(self, sem: ProcessSemaphore, futures: dict[int, Future[Any]],
              outcomes: Counter[str], sysv_before: set[int],
              shm_before: set[str]) -> dict[str, Any]:
        intervals = _intervals(Path(self.log), self.kill_times)
        peak, witnesses = _max_overlap(intervals)
        starts = Counter(n for n, _ in _started(Path(self.starts)))
        completed_twice = [n for n, f in futures.items()
                           if not f.cancelled() and f.exception() is None and starts[n] != 1]
        cancelled_started = [n for n, f in futures.items() if f.cancelled() and starts[n]]
        value = sem.value
        sem.unlink()
        sem.close()
        with contextlib.suppress(FileNotFoundError):
            ProcessSemaphore(1, name=self.cycled).unlink()
        time.sleep(0.2)
        ours = self.pids | {pid for _, pid in _started(Path(self.starts))}
        leftover_sets = sorted(s for s in _sysv_ids() - sysv_before if _last_pids(s) & ours)
        leftover_shm = sorted(f for f in set(os.listdir("/dev/shm")) - shm_before
                              if self.run in f)
        leftover_procs = _children()
        summary = {
            "seconds": self.seconds, "limit": self.limit, "holds": len(intervals),
            "max_concurrency": peak, "value_after": value, "tasks": len(futures),
            "outcomes": dict(outcomes), "kills": dict(self.kills),
            "completed_not_exactly_once": completed_twice[:10],
            "cancelled_but_started": cancelled_started[:10],
            "leftover_sysv_sets": leftover_sets, "leftover_shm": leftover_shm,
            "leftover_processes": leftover_procs, "unexpected_deaths": self.deaths,
        }
        problems = []
        if peak > self.limit:
            problems.append(f"{peak} holders at once at limit {self.limit}: {witnesses}")
        if value != self.limit:
            problems.append(f"value {value} after the run, limit {self.limit}")
        if sum(outcomes.values()) != len(futures):
            problems.append("a task is not accounted for")
        if any(key.startswith("failed") for key in outcomes):
            problems.append("tasks failed with an unexpected error")
        if completed_twice:
            problems.append(f"completed tasks not started exactly once: {completed_twice[:10]}")
        if outcomes["crashed"] > self.kills["pool worker"]:
            problems.append(f"{outcomes['crashed']} crashed tasks for "
                            f"{self.kills['pool worker']} killed workers")
        problems += [f"a participant died of an error: {death}" for death in self.deaths]
        if leftover_sets or leftover_shm or leftover_procs:
            problems.append("objects or processes of the run were left")
        summary["problems"] = problems
        return summary


Interval = tuple[float, float, str]  # start, end, "kind pid"


def _intervals(log: Path, kill_times: dict[int, list[float]]) -> list[Interval]:
    open_: dict[tuple[str, int], float] = {}
    done: list[Interval] = []
    for line in log.read_text().splitlines():
        what, kind, pid, stamp = line.split()
        key = (kind, int(pid))
        if what == "start":
            open_[key] = float(stamp)
        elif key in open_:
            done.append((open_.pop(key), float(stamp), f"{kind} {pid}"))
    for (kind, pid), start in open_.items():  # killed while holding: held until the kill
        end = min((t for t in kill_times.get(pid, ()) if t >= start), default=start)
        done.append((start, end, f"{kind} {pid} (killed)"))
    return done


def _max_overlap(intervals: list[Interval]) -> tuple[int, list[str]]:
    """The most intervals open at one instant, and who they were the first time it happened."""
    events = sorted([(s, 1, i) for i, (s, _, _) in enumerate(intervals)]
                    + [(e, -1, i) for i, (_, e, _) in enumerate(intervals)])
    peak, current, witnesses = 0, set(), []
    for _, delta, i in events:
        if delta > 0:
            current.add(i)
        else:
            current.discard(i)
        if len(current) > peak:
            peak = len(current)
            witnesses = [f"{intervals[j][2]}: {intervals[j][0]:.4f}-{intervals[j][1]:.4f}"
                         for j in sorted(current)]
    return peak, witnesses


def _started(starts: Path) -> list[tuple[int, int]]:
    """(task number, worker pid) of every task start."""
    rows = [line.split() for line in starts.read_text().splitlines()]
    return [(int(row[0]), int(row[1])) for row in rows if len(row) == 2]


def _last_pids(semid: int) -> set[int]:
    """The pids of the last operation on each semaphore of a set (``semctl(GETPID)``)."""
    semctl = ctypes.CDLL(None, use_errno=True).semctl
    found = set()
    for num in range(8):
        pid = semctl(semid, num, 11)  # GETPID
        if pid < 0:
            break
        found.add(pid)
    return found


def _sysv_ids() -> set[int]:
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def _children() -> list[int]:
    """Live processes whose parent is this one (with the subreaper: the run's orphans too)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in cmdline:
                found.append(int(entry))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pt-soak-") as tmp:
        summary = Soak(args.seconds, args.limit, Path(tmp)).go()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    for problem in summary["problems"]:
        print(f"soak: FAILED: {problem}", file=sys.stderr)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
