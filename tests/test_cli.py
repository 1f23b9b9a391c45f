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
from kernel_attack import as_user
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
        ["run", "--name", "ok", "--limit", "1", "--timeout", "nan", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--timeout", "-1", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--timeout", "inf", "--no-wait", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "-E", "300", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--rate", "fast", "--", "true"],
        ["run", "--name", "ok", "--limit", "1", "--rate", "0/s", "--", "true"],
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
    assert "exists with limit 2, not 3: leave out --limit" in out.stderr
    assert "limit=" not in out.stderr  # not the Python API's words
    assert "ProcessSemaphore" not in out.stderr


def test_the_other_kernel_says_which_option_to_change(name: str) -> None:
    assert cli("run", name, "--limit", "1", "--", "true").returncode == 0
    for args in (["--no-crash-safe"], ["--no-crash-safe", "--limit", "1"]):
        out = cli("run", name, *args, "--", "true")
        assert out.returncode == 2
        assert "drop --no-crash-safe" in out.stderr, out.stderr
        assert "crash_safe=" not in out.stderr
    assert cli("unlink", name).returncode == 0
    assert cli("run", name, "--no-crash-safe", "--limit", "1", "--", "true").returncode == 0
    for args in ([], ["--limit", "1"]):
        out = cli("run", name, *args, "--", "true")
        assert out.returncode == 2
        assert "add --no-crash-safe" in out.stderr, out.stderr


def test_the_name_may_come_first(name: str) -> None:
    """As with flock: `procthrottle run NAME -- CMD`, options before or after NAME."""
    assert cli("run", name, "--limit", "2", "--", "echo", "a").stdout == "a\n"
    assert cli("run", "--limit", "2", name, "--", "echo", "b").stdout == "b\n"
    assert cli("run", name, "echo", "c").stdout == "c\n"
    assert cli("run", "--name", name, "--", "echo", "d").stdout == "d\n"  # --name still works
    assert ProcessSemaphore.open(name).limit == 2
    missing = cli("run", "--", "true")
    assert missing.returncode == 2
    assert "procthrottle run NAME -- CMD" in missing.stderr


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
        start_new_session=True,  # killed, it could not give a developer's terminal back
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
    assert "no semaphore or rate limiter named" in missing.stderr
    sem = ProcessSemaphore(3, name=name)
    assert sem.acquire()
    text = cli("status", name)
    assert text.returncode == 0
    assert text.stdout.strip() == f"{name}: limit 3, free 2, held 1, processes attached 1"
    info = json.loads(cli("status", name, "--json").stdout)
    assert info == {"name": name, "crash_safe": True, "limit": 3, "free": 2, "held": 1,
                    "processes_attached": 1, "waiting": 0, "last_pid": os.getpid(),
                    "holders": None}
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


# -- issue 12: a CLI like flock and GNU sem, but crash-safe -----------------------------------

def no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text
        assert len(text.strip().splitlines()) <= 1, text


def waiting_for(name: str) -> int:
    """How many processes are blocked in the kernel waiting for a permit of crash-safe NAME."""
    import sysv_ipc

    from procthrottle._kernel import _sysv

    found = _sysv.find_named(name)
    assert found is not None
    return int(sysv_ipc.Semaphore(found[0]).waiting_for_nonzero)


def test_unlink_under_a_holder_and_a_waiter_is_clean(name: str, tmp_path: Path) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    job = f"touch {ready}; while [ ! -e {go} ]; do sleep 0.01; done; exit 5"
    run = [*CLI, "run", "--name", name, "--limit", "1", "--"]
    pipes = {"env": python_env(), "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
             "text": True}
    holder = subprocess.Popen([*run, "sh", "-c", job], **pipes)  # type: ignore[call-overload]
    wait_until(ready.exists)
    waiter = subprocess.Popen([*run, "true"], **pipes)  # type: ignore[call-overload]
    wait_until(lambda: waiting_for(name) == 1)
    removed = cli("unlink", name)
    assert (removed.returncode, removed.stdout) == (0, f"removed {name}\n")
    _, waiter_err = waiter.communicate(timeout=10)
    assert waiter.returncode == 125
    assert "unlinked while waiting" in waiter_err
    go.touch()
    _, holder_err = holder.communicate(timeout=10)
    assert holder.returncode == 5  # the command's own exit code survives the unlink
    assert holder_err == ""
    no_traceback(waiter_err, holder_err, removed.stderr)


COUNT_SIGINTS = textwrap.dedent(
    """
    import signal, sys, time
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(time.monotonic()))
    open(sys.argv[1], "w").close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (received and time.monotonic() > received[0] + 1):
        time.sleep(0.01)
    sys.exit(10 + len(received))
    """
)


def _in_terminal() -> None:  # pragma: no cover - runs in the child: the pty is its terminal
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("how", ["ctrl-c", "killpg-foreground", "killpg-procthrottle"])
def test_ctrl_c_in_a_terminal_reaches_the_command_once(
    name: str, tmp_path: Path, how: str
) -> None:
    import pty

    master, slave = pty.openpty()
    ready = tmp_path / "ready"
    try:
        proc = subprocess.Popen(
            [*CLI, "run", "--name", name, "--limit", "1", "--",
             PYTHON, "-c", COUNT_SIGINTS, str(ready)],
            stdin=slave, stdout=slave, stderr=slave, env=python_env(),
            start_new_session=True, preexec_fn=_in_terminal,
        )
        wait_until(ready.exists)
        if how == "ctrl-c":
            os.write(master, b"\x03")  # the terminal sends SIGINT to its foreground group
        elif how == "killpg-foreground":
            os.killpg(os.tcgetpgrp(master), signal.SIGINT)  # what the terminal does
        else:
            os.killpg(os.getpgid(proc.pid), signal.SIGINT)  # procthrottle's own group
        assert proc.wait(20) == 11  # the command saw exactly one SIGINT
    finally:
        os.close(slave)
        os.close(master)
    assert ProcessSemaphore(1, name=name).value == 1


def test_interrupted_while_waiting_exits_130_without_traceback(name: str) -> None:
    sem = ProcessSemaphore(1, name=name)
    assert sem.acquire()
    proc = subprocess.Popen([*CLI, "run", "--name", name, "--", "true"], env=python_env(),
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: waiting_for(name) == 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert err == ""
    sem.release()
    assert sem.value == 1


def test_conflict_exit_code_tells_no_permit_from_the_command(name: str) -> None:
    sem = ProcessSemaphore(1, name=name)
    assert sem.acquire()
    busy = cli("run", "--name", name, "--no-wait", "-E", "75", "--", "true")
    assert busy.returncode == 75
    busy = cli("run", "--name", name, "--conflict-exit-code", "0", "--timeout", "0.1", "--",
               "false")
    assert busy.returncode == 0
    assert "within 0.1 s" in busy.stderr
    no_wait = cli("run", "--name", name, "--no-wait", "--", "true")
    assert no_wait.returncode == 124
    assert "within" not in no_wait.stderr
    assert "--no-wait" in no_wait.stderr
    sem.release()
    ran = cli("run", "--name", name, "-E", "75", "--", "sh", "-c", "exit 124")
    assert ran.returncode == 124  # the command's own 124


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib.metadata import version

    out = cli("--version")
    assert (out.returncode, out.stdout) == (0, f"procthrottle {version('procthrottle')}\n")


def test_no_crash_safe_reaches_the_other_kernel(name: str) -> None:
    for flags in ([], ["--no-crash-safe"]):  # both kernels stop at SEMVMX
        big = cli("run", "--name", name, "--limit", "40000", *flags, "--", "true")
        assert big.returncode == 2
        assert "at most 32767" in big.stderr
        no_traceback(big.stderr)
    ran = cli("run", "--name", name, "--limit", "300", "--no-crash-safe", "--", "true")
    assert ran.returncode == 0, ran.stderr
    status = json.loads(cli("status", name, "--json").stdout)
    assert {k: status[k] for k in ("name", "crash_safe", "limit", "free", "held")} == {
        "name": name, "crash_safe": False, "limit": 300, "free": 300, "held": 0,
    }
    assert cli("status", name).stdout.strip().endswith("(not crash-safe)")
    assert ProcessSemaphore(300, name=name, crash_safe=False).value == 300


def test_run_without_limit_joins_the_existing_name(name: str) -> None:
    sem = ProcessSemaphore(3, name=name)
    assert sem.acquire()
    joined = cli("run", "--name", name, "--", "true")
    assert joined.returncode == 0, joined.stderr
    assert sem.value == 2
    sem.release()
    posix = ProcessSemaphore(2, name=f"{name}-p", crash_safe=False)
    try:
        assert cli("run", "--name", f"{name}-p", "--no-crash-safe", "--", "true").returncode == 0
        assert posix.value == 2
    finally:
        posix.unlink()


def test_run_without_limit_on_a_missing_name_says_what_to_do(name: str) -> None:
    out = cli("run", "--name", name, "--", "true")
    assert out.returncode == 2
    assert "give --limit" in out.stderr
    no_traceback(out.stderr)
    assert cli("status", name).returncode == 1  # nothing was created


def test_a_directory_is_not_a_command(name: str, tmp_path: Path) -> None:
    out = cli("run", "--name", name, "--limit", "1", "--", str(tmp_path))
    assert out.returncode == 126
    assert "is a directory" in out.stderr


def test_rate_spaces_the_commands_out_host_wide(name: str, tmp_path: Path) -> None:
    """`--rate 5/s` from separate procthrottle processes: their turns come 0.2 s apart."""
    stamps = tmp_path / "stamps"
    record = [PYTHON, "-c", "import sys, time; open(sys.argv[1], 'a').write("
              "f'{time.monotonic()}\\n')", str(stamps)]
    runs = [subprocess.Popen([*CLI, "run", "--name", name, "--rate", "5/s", "--", *record],
                             env=python_env(), stderr=subprocess.PIPE, text=True)
            for _ in range(5)]
    for run in runs:
        _, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        no_traceback(err)
    starts = sorted(float(line) for line in stamps.read_text().split())
    assert len(starts) == 5
    # GCRA with burst 1 grants slots 0.2 s apart (0.8 s from first to last); each command
    # starts after its slot plus an interpreter's start-up, which varies on a loaded machine
    assert starts[-1] - starts[0] >= 0.8 - 0.2, starts
    from procthrottle._rate import _store

    assert _store.unlink_named(f"{name}.rate")


def test_status_of_name_finds_the_rate_limiter_run_made(name: str) -> None:
    assert cli("run", "--name", name, "--rate", "5/s", "--", "true").returncode == 0
    out = cli("status", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{name}.rate: rate limiter, 5 per 1 s")
    assert "run --name" in out.stdout
    info = json.loads(cli("status", name, "--json").stdout)
    assert (info["name"], info["kind"]) == (f"{name}.rate", "rate")
    assert cli("unlink", f"{name}.rate").returncode == 0


@pytest.mark.timeout(60)
def test_no_permit_is_held_while_waiting_for_the_rate(name: str) -> None:
    """`run --limit 1 --rate R`: while a command waits for its turn under the rate, the
    semaphore's permit stays free for its other users."""
    from procthrottle import RateLimiter

    sem = ProcessSemaphore(1, name=name)
    limiter = RateLimiter("20/min", name=f"{name}.rate")
    assert limiter.acquire()  # the next turn is 3 s away
    run = subprocess.Popen([*CLI, "run", name, "--limit", "1", "--rate", "20/min", "--",
                            "true"], env=python_env(), text=True, stderr=subprocess.PIPE)
    try:
        attached = sem.attached  # type: ignore[attr-defined]  # the System V kernel's count
        assert attached == 1
        # it opened the semaphore, then waits for its turn
        wait_until(lambda: sem.attached == 2)  # type: ignore[attr-defined]
        assert sem.acquire(timeout=1.0)  # the permit is free meanwhile
        assert run.poll() is None  # (it was still waiting)
        sem.release()
        _, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()
        limiter.unlink()
        sem.close()


def test_rate_with_no_wait_gives_the_conflict_code(name: str) -> None:
    first = cli("run", "--name", name, "--rate", "1 per minute", "--", "true")  # a help form
    assert first.returncode == 0, first.stderr
    second = cli("run", "--name", name, "--rate", "1/min", "--no-wait", "-E", "75", "--", "true")
    assert second.returncode == 75
    assert second.stderr.strip() == "procthrottle: no turn under rate 1/min now (--no-wait)"
    other = cli("run", "--name", name, "--rate", "2/min", "--no-wait", "--", "true")
    assert other.returncode == 2, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    no_traceback(other.stderr)
    # the rate limiter NAME.rate is listed, described and removed like a semaphore
    status = cli("status", f"{name}.rate", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["kind"] == "rate"
    assert info["burst"] == 1
    assert info["rates_per_second"] == [pytest.approx(1 / 60)]
    listed = json.loads(cli("list", "--json").stdout)
    assert [e["name"] for e in listed if e.get("kind") == "rate"].count(f"{name}.rate") == 1
    assert cli("unlink", f"{name}.rate").returncode == 0
    assert cli("status", f"{name}.rate").returncode == 1


def test_list_shows_this_users_semaphores(name: str) -> None:
    sem = ProcessSemaphore(3, name=name)
    assert sem.acquire()
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    ours = [e for e in entries if e["name"] == name and e["limit"] == 3
            and e["free"] == 2 and e["crash_safe"]]
    assert ours, entries
    text = cli("list")
    assert text.stdout.splitlines()[0].split()[:5] == ["NAME", "KIND", "LIMIT", "FREE", "HELD"]
    sem.release()


def test_unlink_removes_every_kind(name: str) -> None:
    ProcessSemaphore(2, name=name, crash_safe=False).close()
    assert cli("unlink", name).returncode == 0
    assert cli("status", name).returncode == 1


def test_ctrl_z_stops_command_and_procthrottle_and_fg_resumes_both(
    name: str, tmp_path: Path
) -> None:
    import pty

    master, slave = pty.openpty()
    ready, go = tmp_path / "ready", tmp_path / "go"
    job = f"import os, time\nopen({str(ready)!r}, 'w').close()\n" \
          f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\nraise SystemExit(3)"
    try:
        proc = subprocess.Popen(
            [*CLI, "run", "--name", name, "--limit", "1", "--", PYTHON, "-c", job],
            stdin=slave, stdout=slave, stderr=slave, env=python_env(),
            start_new_session=True, preexec_fn=_in_terminal,
        )
        wait_until(ready.exists)
        os.write(master, b"\x1a")  # Ctrl-Z: SIGTSTP to the terminal's foreground group
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)  # procthrottle stopped too, as a shell's job would
        assert os.tcgetpgrp(master) == os.getpgid(proc.pid)  # and took the terminal back
        go.touch()
        os.kill(proc.pid, signal.SIGCONT)  # what `fg` does after giving it the terminal
        assert proc.wait(20) == 3  # the command was resumed and ran to its end
    finally:
        os.close(slave)
        os.close(master)
    assert ProcessSemaphore(1, name=name).value == 1


@pytest.mark.parametrize("crash_safe", [True, False])
def test_list_shows_a_name_whose_creator_died_before_finishing_it(
    name: str, crash_safe: bool
) -> None:
    """The creator made the object and died; the next opener finished it: still listed."""
    from procthrottle._kernel import _libc, _naming

    size = _naming.nsems(crash_safe)
    assert _libc.create_empty(_naming.key(name), size, 0o600) is not None
    sem = ProcessSemaphore(2, name=name, crash_safe=crash_safe)
    assert sem.acquire(timeout=5)
    listed = json.loads(cli("list", "--json").stdout)
    ours = [e for e in listed if e["name"] == name]
    assert len(ours) == 1, listed
    assert ours[0]["free"] == 1
    sem.release()
    sem.close()


@pytest.mark.parametrize("crash_safe", [True, False])
def test_another_users_name_is_named_as_such(
    other_user: int, name: str, crash_safe: bool
) -> None:
    """`status` and `unlink` of a name another user owns say whose it is (and change nothing)
    instead of "no such name" or an unexpected error."""
    import contextlib
    import io

    from procthrottle._cli import _names, main

    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe)  # root's, owner-only
    # The child runs this interpreter as the other user, who cannot read /root where it (and
    # its standard library) lives here: whatever the CLI imports is imported now.
    with contextlib.redirect_stdout(io.StringIO()):
        main(["status", name])
    assert _names.owner_of(name) is None  # root's own: not another user's
    read_end, write_end = os.pipe()  # the child cannot reach tmp_path (under /tmp/pytest-of-root)
    try:
        # the CLI's own main() in a child that became the other user (our interpreter lives
        # under /root, which that user cannot run)
        as_user(
            other_user,
            f"""
            import contextlib, io, json, os
            from procthrottle._cli import main
            results = []
            for command in ("status", "unlink"):
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    code = main([command, {name!r}])
                results.append((code, err.getvalue()))
            os.write({write_end}, json.dumps(results).encode())
            """,
        )
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            results = json.loads(pipe.read())
        for code, err in results:
            assert code == 1, err
            assert "belongs to another user (uid 0)" in err
            no_traceback(err)
        assert sem.acquire(timeout=5)  # still there, still working
        sem.release()
    finally:
        sem.unlink()
        sem.close()


def test_rate_with_a_name_too_long_for_its_rate_limiter_makes_nothing() -> None:
    name = "a" * 200  # a valid semaphore name, but NAME.rate is 205 characters
    out = cli("run", "--name", name, "--limit", "1", "--rate", "5/s", "--", "true")
    assert out.returncode == 2
    assert "at most 195 characters with --rate" in out.stderr
    assert cli("status", name).returncode == 1  # no semaphore was made either
