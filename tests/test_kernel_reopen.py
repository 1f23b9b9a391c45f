"""Opening a name while another process unlinks it (and makes it anew): start over, never fail.

Found by the soak: a process creating a name that another process was unlinking died of a bare
`sysv_ipc.ExistentialError` or of "was unlinked" from the constructor. The window between
finding the set and attaching to it is widened here by a pause patched into the child.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from helpers import PYTHON, python_env, unique_name
from procthrottle import ProcessSemaphore, SemaphoreClosedError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")

CHILD = """
    import sys, time
    from pathlib import Path
    from procthrottle import ProcessSemaphore
    from procthrottle._kernel import _sysv

    name, flag, go, how, window = sys.argv[1:6]
    # "attach": the set is found, not yet attached; "access": found, its owner not yet read
    module = _sysv if window == "attach" else __import__(
        "procthrottle._kernel._naming", fromlist=["_"])
    attr = "open_or_create_named" if window == "attach" else "check_access"
    original = getattr(module, attr)
    calls = []

    def pause_once():
        if not calls:
            Path(flag).touch()
            while not Path(go).exists():
                time.sleep(0.005)

    def found_then_wait(*args, **kwargs):
        if window == "access":  # the window is before the call
            pause_once()
        result = original(*args, **kwargs)
        if window == "attach":  # ... or after it
            pause_once()
        calls.append(result)
        return result

    setattr(module, attr, found_then_wait)
    sem = ProcessSemaphore(2, name=name) if how == "create" else ProcessSemaphore.open(name)
    assert sem.acquire(timeout=5)
    print(len(calls), sem.value, flush=True)
    sem.release()
    sem.close()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", ["attach", "access"])
@pytest.mark.parametrize("how", ["create", "open"])
@pytest.mark.parametrize("remake", [True, False], ids=["made-anew", "just-unlinked"])
def test_a_name_unlinked_while_opening_is_looked_up_again(
    tmp_path: os.PathLike[str], how: str, remake: bool, window: str
) -> None:
    name = unique_name()
    first = ProcessSemaphore(2, name=name)
    flag, go = os.path.join(tmp_path, "flag"), os.path.join(tmp_path, "go")
    child = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(CHILD), name, flag, go, how, window],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(2000):
            if os.path.exists(flag) or child.poll() is not None:
                break
            time.sleep(0.005)
        assert os.path.exists(flag), child.communicate()[1]
        first.unlink()
        first.close()
        second = ProcessSemaphore(2, name=name) if remake else None
        open(go, "w").close()
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    if how == "open" and not remake:
        # the name is gone for good: open() says so, as it would have without the race
        assert child.returncode != 0
        assert "FileNotFoundError" in err.strip().splitlines()[-1], err
        return
    assert child.returncode == 0, err
    lookups, value_while_held = map(int, out.split())
    if window == "attach":
        assert lookups == 2  # it started over once
    if second is not None:
        # the child is on the set that has the name now: its permit shows here
        assert value_while_held == 1
        assert second.value == 2
        second.unlink()
        second.close()
    else:
        reopened = ProcessSemaphore.open(name)
        assert reopened.value == 2
        reopened.unlink()
        reopened.close()


POSIX_CHILD = """
    import sys, time
    from pathlib import Path
    from procthrottle import ProcessSemaphore
    from procthrottle._kernel import _sysv

    name, flag, go = sys.argv[1:4]
    original, paused = _sysv.open_or_create_named, []

    def found_then_wait(*args, **kwargs):
        result = original(*args, **kwargs)
        if not paused:  # the set is found, not yet attached
            paused.append(True)
            Path(flag).touch()
            while not Path(go).exists():
                time.sleep(0.005)
        return result

    _sysv.open_or_create_named = found_then_wait
    sem = ProcessSemaphore(1, name=name, crash_safe=False)
    assert sem.acquire(timeout=5)
    print(sem.value, flush=True)
    time.sleep(0.5)
    sem.release()
    sem.close()
"""


@pytest.mark.timeout(60)
def test_crash_safe_false_name_unlinked_and_made_anew_while_opening(tmp_path: Path) -> None:
    """crash_safe=False: a name unlinked and made anew between finding its set and attaching
    to it must leave the opener on the new set (one name is one semaphore), with its permit
    accounted there."""
    name = unique_name()
    ProcessSemaphore(1, name=name, crash_safe=False).close()
    flag, go = tmp_path / "flag", tmp_path / "go"
    child = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(POSIX_CHILD), name, str(flag), str(go)],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(2000):
            if flag.exists() or child.poll() is not None:
                break
            time.sleep(0.005)
        assert flag.exists(), child.communicate()[1]
        ProcessSemaphore.open(name, crash_safe=False).unlink()
        second = ProcessSemaphore(1, name=name, crash_safe=False)
        go.touch()
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "0"  # it holds the new one
        assert second.value == 0  # so this one shows it
        assert not second.acquire(timeout=0.1)  # and no second permit exists
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert second.acquire(timeout=5)  # its release came here
        second.release()
        assert second.value == 1
    finally:
        child.kill()
        second_name = ProcessSemaphore.open(name, crash_safe=False)
        second_name.unlink()
        second_name.close()


@pytest.mark.parametrize("crash_safe", [True, False])
def test_a_handle_unpickled_after_its_name_was_removed_is_an_error_not_a_new_semaphore(
    crash_safe: bool,
) -> None:
    """A named handle sent to a process (a spawn worker, a pool task) joins the name; if the
    name was unlinked meanwhile, unpickling raises instead of creating a second semaphore of
    that name whose permits nobody else shares."""
    name = unique_name("pt-sent")
    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe)
    sent = pickle.dumps(sem)
    joined = pickle.loads(sent)  # the name exists: the same permits
    assert joined.acquire(block=False)
    assert not sem.acquire(block=False)
    joined.release()
    joined.close()
    sem.unlink()
    with pytest.raises(SemaphoreClosedError, match="removed from the host"):
        pickle.loads(sent)
    with pytest.raises(FileNotFoundError):
        ProcessSemaphore.open(name, crash_safe=crash_safe)  # nothing was made
    remade = ProcessSemaphore(2, name=name, crash_safe=crash_safe)
    try:
        with pytest.raises(SemaphoreClosedError, match="made anew with limit 2"):
            pickle.loads(sent)
    finally:
        remade.unlink()
