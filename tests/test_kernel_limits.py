"""The host's System V limits: running out of semaphores says what ran out and what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from helpers import PYTHON, python_env

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")

OUT_OF_SETS = """
    import errno
    from pathlib import Path
    # a private IPC namespace: its kernel.sem is its own, the host's limits are untouched
    Path("/proc/sys/kernel/sem").write_text("250 32000 32 3")
    from procthrottle import ProcessSemaphore, RateLimiter
    kept = []
    try:
        for crash_safe in [True, False] * 4:
            kept.append(ProcessSemaphore(1, crash_safe=crash_safe))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        print(len(Path('/proc/sysvipc/sem').read_text().splitlines()) - 1)
        print(exc.strerror)
    else:
        raise AssertionError("created more sets than kernel.sem allows")
"""


def _in_own_ipc_namespace(code: str) -> subprocess.CompletedProcess[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run([unshare, "--ipc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("cannot make an IPC namespace here (needs CAP_SYS_ADMIN)")
    return subprocess.run(
        [unshare, "--ipc", PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_running_out_of_semaphore_sets_says_what_ran_out_and_what_to_do() -> None:
    result = _in_own_ipc_namespace(OUT_OF_SETS)
    assert result.returncode == 0, result.stderr
    made, message = result.stdout.splitlines()
    assert made == "3"  # the namespace's SEMMNI, reached
    assert "no System V semaphores left on this host" in message
    assert "kernel.sem allows 3 sets" in message  # the limit that ran out
    assert "sysctl -w kernel.sem=" in message  # how to raise it
    assert "procthrottle unlink" in message  # the way out without root
