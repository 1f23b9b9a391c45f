"""The procthrottle command line, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PYTHON, max_overlap, python_env, read_intervals, unique_name
from procthrottle import ProcessSemaphore

CLI = [PYTHON, "-m", "procthrottle"]


@pytest.fixture
def name() -> Iterator[str]:
    name = unique_name("pt-cli")
    yield name
    subprocess.run([*CLI, "unlink", name], env=python_env(), capture_output=True, check=False)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=python_env(), capture_output=True, text=True, timeout=timeout
    )


def wait_until(predicate: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_exit_code_of_the_command_is_propagated(name: str) -> None:
    assert cli("run", "--name", name, "--limit", "2", "--", "true").returncode == 0
    done = cli("run", "--name", name, "--limit", "2", "--", "sh", "-c", "echo out; exit 3")
    assert (done.returncode, done.stdout) == (3, "out\n")
    killed = cli("run", "--name", name, "--limit", "2", "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + signal.SIGKILL
    assert ProcessSemaphore(2, name=name).value == 2


def test_console_script_is_installed(name: str) -> None:
    script = Path(sys.executable).parent / "procthrottle"
    out = subprocess.run(
        [str(script), "run", "--name", name, "--limit", "1", "--", "echo", "hello"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert (out.returncode, out.stdout) == (0, "hello\n")


def test_timeout_and_no_wait_exit_124(name: str) -> None:
    sem = ProcessSemaphore(1, name=name)
    assert sem.acquire()
    start = time.monotonic()
    out = cli("run", "--name", name, "--limit", "1", "--timeout", "0.3", "--", "true")
    assert out.returncode == 124
    assert time.monotonic() - start >= 0.3
    assert "no permit" in out.stderr
    assert cli("run", "--name", name, "--limit", "1", "--no-wait", "--", "true").returncode == 124
    sem.release()
    assert cli("run", "--name", name, "--limit", "1", "--no-wait", "--", "true").returncode == 0
    assert sem.value == 1


def test_command_not_found_127_and_not_executable_126(name: str, tmp_path: Path) -> None:
    missing = cli("run", "--name", name, "--limit", "1", "--", "no-such-command-xyz")
    assert missing.returncode == 127
    assert "command not found" in missing.stderr
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho never\n")
    assert cli("run", "--name", name, "--limit", "1", "--", str(script)).returncode == 126
    assert ProcessSemaphore(1, name=name).value == 1


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--name", "bad/name", "--limit", "1", "--", "true"],
        ["run", "--name", "x" * 201, "--limit", "1", "--", "true"],
        ["run", "--name", "ok", "--limit", "0", "--", "true"],
        ["run", "--name", "ok", "--limit", "two", "--", "true"],
        ["run", "--name", "ok", "--limit", "40000", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--timeout", "soon", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--"],
        ["status", "bad name"],
        ["frobnicate"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("procthrottle")


def test_other_limit_for_existing_name_is_exit_2(name: str) -> None:
    assert cli("run", "--name", name, "--limit", "2", "--", "true").returncode == 0
    out = cli("run", "--name", name, "--limit", "3", "--", "true")
    assert out.returncode == 2
    assert "already exists with limit=2" in out.stderr


def test_six_concurrent_invocations_keep_the_bound(name: str, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    job = (
        "import time, os; s = time.monotonic(); time.sleep(0.2); "
        f"open({str(record)!r}, 'a').write(f'{{os.getpid()}} {{s}} {{time.monotonic()}}\\n')"
    )
    procs = [
        subprocess.Popen([*CLI, "run", "--name", name, "--limit", "2", "--", PYTHON, "-c", job],
                         env=python_env())
        for _ in range(6)
    ]
    assert [p.wait(60) for p in procs] == [0] * 6
    intervals = read_intervals(record)
    assert len(intervals) == 6
    assert max_overlap(intervals) == 2
    assert ProcessSemaphore(2, name=name).value == 2


def test_sigkilled_procthrottle_returns_permit_and_stops_command(
    name: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen(
        [*CLI, "run", "--name", name, "--limit", "1", "--",
         "sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"],
        env=python_env(),
    )
    sem = ProcessSemaphore(1, name=name)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    assert sem.value == 0
    proc.kill()
    proc.wait(10)
    assert sem.acquire(timeout=1.0)  # the kernel gave the permit back
    sem.release()
    command_pid = int(pidfile.read_text())

    def command_gone() -> bool:
        try:
            os.kill(command_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(command_gone, 5)  # PR_SET_PDEATHSIG sent it SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_and_permit_released(
    name: str, tmp_path: Path, sig: signal.Signals
) -> None:
    marker = tmp_path / "got"
    job = textwrap.dedent(
        f"""
        import signal, sys, time
        def on_signal(signum, frame):
            open({str(marker)!r}, "w").write(str(signum))
            sys.exit(7)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, on_signal)
        open({str(marker)!r} + ".ready", "w").close()
        time.sleep(30)
        """
    )
    proc = subprocess.Popen(
        [*CLI, "run", "--name", name, "--limit", "1", "--", PYTHON, "-c", job], env=python_env()
    )
    wait_until(lambda: Path(f"{marker}.ready").exists())
    proc.send_signal(sig)
    assert proc.wait(10) == 7
    assert marker.read_text() == str(int(sig))
    assert ProcessSemaphore(1, name=name).value == 1


def test_status_and_unlink(name: str) -> None:
    missing = cli("status", name)
    assert missing.returncode == 1
    assert "no semaphore named" in missing.stderr
    sem = ProcessSemaphore(3, name=name)
    assert sem.acquire()
    text = cli("status", name)
    assert text.returncode == 0
    assert text.stdout.strip() == f"{name}: limit 3, free 2, held 1, processes attached 1"
    info = json.loads(cli("status", name, "--json").stdout)
    assert info == {"name": name, "limit": 3, "free": 2, "held": 1, "processes_attached": 1}
    sem.release()
    sem.close()
    assert cli("unlink", name).stdout == f"removed {name}\n"
    assert cli("unlink", name).returncode == 1
    assert cli("status", name).returncode == 1


def test_help_shows_examples() -> None:
    out = cli("--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout
    assert "procthrottle run --name" in out.stdout
    assert cli("run", "--help").returncode == 0
