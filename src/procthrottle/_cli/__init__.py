"""Layer 4: ``procthrottle``, the command line: throttle shell commands host-wide.

It never prints a Python traceback: every failure is one line on stderr and a documented exit
code (``procthrottle --help``; set ``PROCTHROTTLE_DEBUG=1`` to see the traceback of an
unexpected error).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._exceptions import SemaphoreClosedError
from .._kernel._validate import MAX_NAME_LENGTH
from . import _names
from ._errors import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND_NAME,
    EXIT_USAGE,
    CliError,
)
from ._parser import build_parser
from ._process import check_command, run_command

if TYPE_CHECKING:  # `status` and `list` import the inventory when they run
    from .._kernel._inventory import NamedInfo, RateInfo

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command == "run" and args.name is None:  # `run NAME [options] -- CMD`
            args = parser.parse_args(_name_first(argv, args.cmd))
        return _dispatch(args)
    except CliError as exc:
        _say(f"procthrottle: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `procthrottle list | head`
        _quiet_stdout()
        return 0
    except Exception as exc:
        if os.environ.get("PROCTHROTTLE_DEBUG"):
            import traceback  # only here: every other call saves its import

            traceback.print_exc()
        _say(f"procthrottle: unexpected error: {type(exc).__name__}: {exc} "
             "(PROCTHROTTLE_DEBUG=1 shows the traceback)")
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise CliError("run: no command given after --", EXIT_USAGE)
        conflict = EXIT_CONFLICT if args.conflict_exit_code is None else args.conflict_exit_code
        return _run(args.name, cmd, limit=args.limit, rate=args.rate, wait=args.wait,
                    timeout=args.timeout, crash_safe=args.crash_safe, conflict=conflict)
    if args.command == "status":
        return _status(args.name, as_json=args.json)
    if args.command == "list":
        return _list(as_json=args.json)
    return _unlink(args.name)


def _name_first(argv: list[str], rest: list[str]) -> list[str]:
    """``run [options] NAME [options] -- CMD`` as ``run [options] --name NAME [options] -- CMD``.

    Without ``--name``, everything from the first positional argument on is in ``rest`` (the
    parser's remainder): that argument is NAME, and what follows it is parsed again.
    """
    if not rest or rest[0] == "--":
        raise CliError(
            "run: give the semaphore's name: procthrottle run NAME -- CMD (or --name NAME)",
            EXIT_USAGE,
        )
    before = argv[: len(argv) - len(rest)]
    return [*before, "--name", rest[0], *rest[1:]]


def _run(
    name: str,
    cmd: list[str],
    *,
    limit: int | None,
    rate: str | None,
    wait: bool,
    timeout: float | None,
    crash_safe: bool,
    conflict: int,
) -> int:
    check_command(cmd)
    deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
    # --rate alone throttles by rate only; otherwise NAME's semaphore (created with --limit, or
    # joined as it exists) bounds how many commands run at once.
    # The rate limiter first: a bad rate, or a NAME too long for its NAME.rate, makes nothing.
    limiter = None if rate is None else _names.rate_limiter(name, rate)
    sem = None
    try:
        sem = None if rate is not None and limit is None else _names.open_semaphore(
            name, limit, crash_safe=crash_safe)
        # The turn under the rate first, then the permit: no permit is held while waiting
        # for a rate slot (that would starve the semaphore's other users).
        if limiter is not None and not limiter.acquire(block=wait, timeout=_left(deadline)):
            _say(f"procthrottle: no turn under rate {rate} " + (
                "now (--no-wait)" if not wait else f"within {timeout:g} s (--timeout)"))
            return conflict
        if sem is not None:
            try:
                got = sem.acquire(block=wait, timeout=_left(deadline))
            except SemaphoreClosedError:
                raise CliError(f"semaphore {name!r} was unlinked while waiting for a permit",
                               EXIT_FAILED) from None
            if not got:
                _say(f"procthrottle: no permit of {name!r} " + (
                    "free (--no-wait)" if not wait else f"within {timeout:g} s (--timeout)"))
                return conflict
        try:
            return run_command(cmd)
        finally:
            if sem is not None:
                with contextlib.suppress(SemaphoreClosedError):
                    sem.release()  # raises if unlinked while held: the permit went with it
    finally:
        if sem is not None:
            sem.close()
        if limiter is not None:
            limiter.close()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _status(name: str, *, as_json: bool) -> int:
    """NAME as a semaphore or a rate limiter; also ``NAME.rate``, which ``run --name NAME
    --rate R`` makes beside (or instead of) the semaphore NAME."""
    import json  # `status` and `list` only: `run` does without it

    found = _names.describe(name)
    rates = [_names.describe_rate(name)]
    if not name.endswith(".rate") and len(_names.rate_name(name)) <= MAX_NAME_LENGTH:
        rates.append(_names.describe_rate(_names.rate_name(name)))
    if not found and not any(rates):
        raise _not_found(name)
    for info in found:
        print(json.dumps(_as_dict(info)) if as_json else _line(info))
    for rate in rates:
        if rate is not None:
            made_by_run = " (made by `run --name " + name + " --rate`)" if rate.name != name else ""
            print(json.dumps(_rate_dict(rate)) if as_json else
                  f"{rate.name}: rate limiter, {rate.rate_text}, burst {rate.burst}, "
                  f"processes attached {rate.attached}{made_by_run}")
    return 0


def _rate_dict(info: RateInfo) -> dict[str, object]:
    return {"name": info.name, "kind": "rate", "rates_per_second": list(info.rates),
            "burst": info.burst, "processes_attached": info.attached}


def _as_dict(info: NamedInfo) -> dict[str, object]:
    """The JSON form: what the OS tells; ``holders`` is null (no kernel records them)."""
    found: dict[str, object] = {
        "name": info.name, "crash_safe": info.crash_safe, "limit": info.limit,
        "free": info.value, "held": info.held,
    }
    if info.attached is not None:
        found |= {"processes_attached": info.attached, "waiting": info.waiting,
                  "last_pid": info.last_pid}
    return found | {"holders": None}


def _line(info: NamedInfo) -> str:
    text = f"{info.name}: limit {info.limit}, free {info.value}, held {info.held}"
    if info.attached is not None:
        text += f", processes attached {info.attached}"
    if info.waiting:
        text += f", waiting {info.waiting}"
    return text if info.crash_safe else text + " (not crash-safe)"


def _list(*, as_json: bool) -> int:
    import json

    found = _names.list_named()
    rates = _names.list_rates()
    if as_json:
        print(json.dumps([_as_dict(info) for info in found] + [_rate_dict(r) for r in rates]))
        return 0
    rows: list[tuple[str, ...]] = [
        ("NAME", "KIND", "LIMIT", "FREE", "HELD", "ATTACHED", "WAITING", "LAST PID")
    ]
    for info in found:
        rows.append((
            info.name, "crash-safe" if info.crash_safe else "no-crash-safe",
            str(info.limit), str(info.value), str(info.held),
            *("-" if v is None else str(v) for v in (info.attached, info.waiting, info.last_pid)),
        ))
    for rate in rates:  # a rate limiter has no permits: its rate stands in the LIMIT column
        rows.append((rate.name, "rate", rate.rate_text.replace(" ", ""), "-", "-",
                     str(rate.attached), "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _unlink(name: str) -> int:
    if not _names.unlink(name):
        raise _not_found(name)
    print(f"removed {name}")
    return 0


def _not_found(name: str) -> CliError:
    """No such name of this user: say so, or whose it is if another user's."""
    owner = _names.owner_of(name)
    if owner is not None:
        return CliError(
            f"{name!r} belongs to another user (uid {owner}); procthrottle shows and removes "
            "only your own names",
            EXIT_NOT_FOUND_NAME,
        )
    return CliError(f"no semaphore or rate limiter named {name!r} on this host",
                    EXIT_NOT_FOUND_NAME)


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to tell
        print(line, file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """After EPIPE on stdout: point it at /dev/null so the interpreter's flush at exit is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
