"""Who may attach to a named object: the ownership rule both kernels apply.

A named object is attached to when this user owns it (owner and creator), or when the
caller's ``mode`` opts in to sharing and the object is shared the same way: group bits accept
an object of a group the caller belongs to, other bits accept anyone's. Anything else is a
`PermissionError` naming the conflict; nothing is ever attached to silently. docs/design.md
("Threat model") says why.
"""

from __future__ import annotations

import os


class NameConflictError(ValueError, FileExistsError):
    """The name is taken in a way this call cannot use (another kernel, another program)."""


def _groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}


def check_owner(what: str, *, uid: int, cuid: int, gid: int, object_mode: int, mode: int) -> None:
    """Raise `PermissionError` unless an object with these credentials may be used."""
    me = os.geteuid()
    if uid == me and cuid == me:
        return
    owner = uid if uid != me else cuid
    object_mode &= 0o777
    shares = ""
    if mode & 0o007 and object_mode & 0o006 == 0o006:
        return
    if mode & 0o070 and object_mode & 0o060 == 0o060 and gid in _groups():
        return
    if mode & 0o077:
        shares = (
            f"; your mode={mode:#o} accepts a shared object only if it grants the same sharing "
            f"(it has mode {object_mode:#o}, group {gid})"
        )
    raise PermissionError(
        f"{what} is owned by another user (uid {owner}), and named semaphores are private "
        f"to their owner unless mode= grants sharing{shares}. Choose another name, or ask "
        "that user (or root) to remove it with `procthrottle unlink`"
    )
