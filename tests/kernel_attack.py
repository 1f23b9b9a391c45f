"""Shared by the kernel attack tests: a child runner and System V look-ups."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import PYTHON, python_env

KINDS = [pytest.param(True, id="crash_safe"), pytest.param(False, id="posix")]


def run_child(
    code: str, timeout: float = 60, *, returncode: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; it must end with ``returncode`` (-N: signal N)."""
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == returncode, result.stderr
    return result


def sets_with_key(key: int) -> list[int]:
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    return [int(f.split()[1]) for f in lines if int(f.split()[0]) == key]


def as_user(uid: int, code: str, gid: int | None = None) -> None:
    """Run ``code`` in a forked child that became user ``uid`` (group ``gid``, else its own)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            os.setgroups([])
            os.setgid(uid if gid is None else gid)
            os.setuid(uid)
            exec(textwrap.dedent(code), {})
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
