"""Layer 4: ``procthrottle``, the command line: throttle shell commands host-wide."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from ._kernel import _libc, _sysv
from ._kernel._semaphore import ProcessSemaphore
from ._kernel._validate import check_limit, check_name

EXIT_TIMEOUT, EXIT_CANNOT_RUN, EXIT_NOT_FOUND = 124, 126, 127
FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)  # Windows has only the first two
)

EPILOG = """\
examples:
  # at most 2 of these encoders run at once on this host, whoever starts them
  procthrottle run --name encoder --limit 2 -- ffmpeg -i in.mkv out.mp4

  # give up after 60 s of waiting for a permit (exit code 124)
  procthrottle run --name db-backup --limit 1 --timeout 60 -- ./backup.sh

  # in a loop: start 20 jobs, 4 run at a time
  for f in *.csv; do procthrottle run --name load --limit 4 -- ./load "$f" & done; wait

  procthrottle status encoder          # limit, free permits, holders
  procthrottle status encoder --json
  procthrottle unlink encoder          # remove it from the host

The permit is crash-safe: if procthrottle is killed, even by SIGKILL, the kernel returns it
(and the command is sent SIGTERM). SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the
command; procthrottle exits with the command's exit code (128+N if signal N killed it), 124
when no permit came within --timeout, 126 when the command cannot run, 127 when it is not
found.
"""


def _name(value: str) -> str:
    try:
        return str(check_name(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(value: str) -> int:
    try:
        return check_limit(int(value))
    except ValueError as exc:
        message = f"limit must be an int, got {value!r}" if "literal" in str(exc) else str(exc)
        raise argparse.ArgumentTypeError(message) from None


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timeout must be a number, got {value!r}") from None
    if seconds != seconds or seconds < 0:
        raise argparse.ArgumentTypeError(f"timeout must be >= 0 seconds, got {value!r}")
    return seconds


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line on stderr, exit code 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="procthrottle",
        description="Run commands while holding a permit of a host-wide, crash-safe semaphore.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run CMD while holding one permit of NAME",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--name", required=True, type=_name, help="the semaphore's host-wide name")
    run.add_argument("--limit", required=True, type=_limit, help="permits (created if new)")
    run.add_argument("--timeout", type=_timeout, metavar="S",
                     help="wait at most S seconds for a permit (exit 124 after)")
    run.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="wait for a permit (default); --no-wait exits 124 if none is free")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    status = commands.add_parser("status", help="print limit, free permits and holders")
    status.add_argument("name", type=_name)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    unlink = commands.add_parser("unlink", help="remove NAME from the host")
    unlink.add_argument("name", type=_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run: no command given after --")
        return _run(parser, args.name, args.limit, None if not args.wait else args.timeout,
                    args.wait, cmd)
    if args.command == "status":
        return _status(args.name, as_json=args.json)
    return _unlink(args.name)


def _run(
    parser: argparse.ArgumentParser,
    name: str,
    limit: int,
    timeout: float | None,
    wait: bool,
    cmd: list[str],
) -> int:
    try:
        sem = ProcessSemaphore(limit, name=name)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        got = sem.acquire(block=wait, timeout=timeout)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    if not got:
        print(f"procthrottle: no permit of {name!r} within {timeout or 0:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    try:
        return _run_holding(cmd)
    finally:
        sem.release()
        sem.close()


def _run_holding(cmd: list[str]) -> int:
    try:
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
    except FileNotFoundError:
        print(f"procthrottle: {cmd[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        print(f"procthrottle: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return EXIT_CANNOT_RUN

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


_PRCTL = getattr(_libc.libc, "prctl", None)  # Linux only
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the command gets SIGTERM if procthrottle dies (its permit is already back)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _status(name: str, *, as_json: bool) -> int:
    found = _sysv.find_named(name)
    if found is None:
        print(f"procthrottle: no semaphore named {name!r} on this host", file=sys.stderr)
        return 1
    _, semid, limit = found
    free = _libc.getval(semid, _sysv.PERMITS)
    info = {
        "name": name,
        "limit": limit,
        "free": free,
        "held": limit - free,
        "processes_attached": _libc.getval(semid, _sysv.ATTACH),
    }
    if as_json:
        print(json.dumps(info))
    else:
        print(f"{name}: limit {limit}, free {free}, held {limit - free}, "
              f"processes attached {info['processes_attached']}")
    return 0


def _unlink(name: str) -> int:
    if not _sysv.unlink_named(name):
        print(f"procthrottle: no semaphore named {name!r} on this host", file=sys.stderr)
        return 1
    print(f"removed {name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
