"""Run the command while holding a permit: its process group, the terminal, and signals.

The command runs in a process group of its own. When procthrottle is in the foreground of a
terminal, that group is made the terminal's foreground group for as long as the command runs,
so Ctrl-C, Ctrl-\\ and a hangup reach the command directly, once, and not procthrottle. A signal
that reaches procthrottle itself (``kill PID``, ``kill -- -PGID``, a supervisor) therefore never
reached the command's group, and is forwarded to that group: the command sees every signal
once. Ctrl-Z stops the command; procthrottle then stops too, so the shell's job control works,
and ``fg`` resumes both.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from types import FrameType

from .._kernel import _libc
from ._errors import EXIT_CANNOT_RUN, EXIT_NOT_FOUND, CliError

FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)
)


def _prctl() -> ctypes._NamedFuncPointer | None:
    """libc's ``prctl`` (Linux only), a function object of our own, typed here."""
    try:
        prctl = _libc.libc["prctl"]
    except AttributeError:  # pragma: no cover - not Linux
        return None
    # prctl is variadic: argtypes name its fixed argument only; the rest go as ctypes values.
    prctl.argtypes = (ctypes.c_int,)
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def check_command(cmd: list[str]) -> None:
    """Refuse, before waiting for a permit, a command that cannot run (126) or is missing (127)."""
    program = cmd[0]
    if os.sep in program:
        if os.path.isdir(program):
            raise CliError(f"{program}: is a directory", EXIT_CANNOT_RUN)
        if not os.path.exists(program):
            raise CliError(f"{program}: no such file or directory", EXIT_NOT_FOUND)
        if not os.access(program, os.X_OK):
            raise CliError(f"{program}: permission denied (not executable)", EXIT_CANNOT_RUN)
    elif shutil.which(program) is None:
        raise CliError(f"{program}: command not found", EXIT_NOT_FOUND)


def run_command(cmd: list[str]) -> int:
    """Run ``cmd`` to its end; return its exit code (128+N if signal N killed it)."""
    tty = _foreground_terminal()
    try:
        try:
            parent = os.getpid()
            child = subprocess.Popen(cmd, preexec_fn=lambda: _in_child(tty, parent))
        except FileNotFoundError:
            raise CliError(f"{cmd[0]}: command not found", EXIT_NOT_FOUND) from None
        except IsADirectoryError:
            raise CliError(f"{cmd[0]}: is a directory", EXIT_CANNOT_RUN) from None
        except OSError as exc:
            raise CliError(f"{cmd[0]}: {exc.strerror or exc}", EXIT_CANNOT_RUN) from None
        return _supervise(child, tty)
    finally:
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
            os.close(tty)


def _supervise(child: subprocess.Popen[bytes], tty: int | None) -> int:
    # also done in the child, whoever comes first; fails once the child ran exec or exited
    with contextlib.suppress(OSError):
        os.setpgid(child.pid, child.pid)
    if tty is not None:
        _give_terminal(tty, child.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        _signal_group(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                _, status = os.waitpid(child.pid, os.WUNTRACED)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                status = 0
            if os.WIFSTOPPED(status):
                _stopped(child.pid, tty)
                continue
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
            return 128 - code if code < 0 else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(pgid: int, tty: int | None) -> None:
    """The command stopped (Ctrl-Z): stop too, so the shell sees the job stopped."""
    if tty is None:
        return  # stopped by someone else's SIGSTOP: they will continue it
    _give_terminal(tty, os.getpgrp())
    os.kill(os.getpid(), signal.SIGSTOP)
    # continued (fg or bg): resume the command; give it the terminal if we have it
    try:
        if os.tcgetpgrp(tty) == os.getpgrp():
            _give_terminal(tty, pgid)
    except OSError:
        pass
    _signal_group(pgid, signal.SIGCONT)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the command left its group (setsid): signal it alone
        with contextlib.suppress(ProcessLookupError):  # or it exited meanwhile
            os.kill(pgid, signum)


def _foreground_terminal() -> int | None:
    """A descriptor of our controlling terminal when we are its foreground group, else None."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _give_terminal(tty: int, pgid: int) -> None:
    """Make ``pgid`` the terminal's foreground group (SIGTTOU blocked, as a shell does)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(tty, pgid)
    except OSError:
        pass  # the group is gone, or the terminal was hung up
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _in_child(tty: int | None, parent: int) -> None:  # pragma: no cover - child, before exec
    os.setpgid(0, 0)
    if tty is not None:
        _give_terminal(tty, os.getpid())
    if _PRCTL is not None:  # Linux: SIGTERM when procthrottle dies (its permit is back already)
        _PRCTL(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM))
        if os.getppid() != parent:  # procthrottle died before prctl: do not run unthrottled
            os._exit(128 + signal.SIGTERM)
