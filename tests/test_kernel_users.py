"""Another local user: named objects are owner-only, never attached to unless `mode` opts in."""

from __future__ import annotations

import os

import pytest

from helpers import unique_name
from kernel_attack import KINDS, as_user, sets_with_key
from procthrottle import ProcessSemaphore
from procthrottle._kernel import _inventory, _libc, _naming

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/sysvipc"), reason="Linux only")


# -- another user --------------------------------------------------------------------------------
def test_squatted_system_v_key_is_refused(other_user: int) -> None:
    name = unique_name()
    key, hi_lo = _naming.key(name), _naming.tag(name)
    as_user(
        other_user,
        f"""
        from procthrottle._kernel import _libc
        semid = _libc.create_empty({key}, 5, 0o666)
        values = ((0, 100, 0), (2, 1, 0), (3, {hi_lo[0]}, 0), (4, {hi_lo[1]}, 0))
        _libc.semop(semid, _libc.ops(*values))
    """,
    )
    try:
        with pytest.raises(PermissionError, match="owned by another user"):
            ProcessSemaphore(1, name=name)
        with pytest.raises(PermissionError, match="another user"):
            ProcessSemaphore.open(name)
        with pytest.raises(PermissionError):
            ProcessSemaphore(1, name=name, mode=0o660)  # not our group's
    finally:
        semids = sets_with_key(key)
        for semid in semids:
            _libc.remove(semid)
    assert len(semids) == 1


def test_squatted_crash_safe_false_key_is_refused(other_user: int) -> None:
    """The squatter made the name's set (crash_safe=False layout, shared with everyone):
    a default-mode creator or opener is refused, whichever kernel it asks for."""
    name = unique_name()
    key, hi_lo = _naming.key(name), _naming.tag(name)
    as_user(
        other_user,
        f"""
        from procthrottle._kernel import _libc
        semid = _libc.create_empty({key}, 6, 0o666)
        values = ((0, 100, 0), (2, 1, 0), (3, {hi_lo[0]}, 0), (4, {hi_lo[1]}, 0))
        _libc.semop(semid, _libc.ops(*values))
    """,
    )
    try:
        for crash_safe in (False, True):
            with pytest.raises(PermissionError, match="owned by another user"):
                ProcessSemaphore(1, name=name, crash_safe=crash_safe)
            with pytest.raises(PermissionError, match="another user"):
                ProcessSemaphore.open(name, crash_safe=crash_safe)
    finally:
        semids = sets_with_key(key)
        for semid in semids:
            _libc.remove(semid)
    assert len(semids) == 1


def test_sharing_is_opt_in_with_mode(other_user: int) -> None:
    name = unique_name()
    as_user(
        other_user,
        f"""
        from procthrottle import ProcessSemaphore
        for crash_safe in (True, False):
            name = {name!r} + str(crash_safe)
            s = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o666)
            s.close()
    """,
    )
    for crash_safe in (True, False):
        shared = f"{name}{crash_safe}"
        with pytest.raises(PermissionError):
            ProcessSemaphore(1, name=shared, crash_safe=crash_safe)
        sem = ProcessSemaphore(1, name=shared, crash_safe=crash_safe, mode=0o666)
        assert sem.acquire(block=False)
        assert not sem.acquire(block=False)
        sem.release()
        sem.unlink()


@pytest.mark.parametrize("crash_safe", KINDS)
def test_group_sharing_accepts_only_a_group_of_ours(other_user: int, crash_safe: bool) -> None:
    name = unique_name()
    as_user(
        other_user,
        f"""
        from procthrottle import ProcessSemaphore
        s = ProcessSemaphore(1, name={name!r}, crash_safe={crash_safe}, mode=0o660)
        s.close()
        """,
        gid=os.getegid(),  # a group the test process is in
    )
    try:
        with pytest.raises(PermissionError, match="another user"):
            ProcessSemaphore(1, name=name, crash_safe=crash_safe)  # owner-only: refused
        with pytest.raises(PermissionError, match="same sharing"):
            ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o606)  # not for others
        sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o660)
        assert sem.acquire(block=False)
        sem.release()
        sem.close()
    finally:
        _inventory.unlink_any(name)


@pytest.mark.parametrize("crash_safe", KINDS)
def test_named_objects_get_the_mode_asked_for(crash_safe: bool) -> None:
    name = unique_name()
    sem = ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o660)
    try:
        (info,) = [i for i in _libc.listing() if i.semid == sem._semid]  # type: ignore[attr-defined]
        assert info.mode & 0o777 == 0o660
        assert info.nsems == _naming.nsems(crash_safe)
    finally:
        sem.unlink()
    with pytest.raises(ValueError, match="0o600"):
        ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode=0o644 & ~0o200)
    with pytest.raises(TypeError):
        ProcessSemaphore(1, name=name, crash_safe=crash_safe, mode="0o600")  # type: ignore[arg-type]


