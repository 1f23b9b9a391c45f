"""The argument parser: every option validated here, so a bad one is one line and exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from .._kernel._validate import MAX_LIMIT, check_name

EPILOG = """\
examples:
  # at most 2 of these encoders run at once on this host, whoever starts them
  procthrottle run --name encoder --limit 2 -- ffmpeg -i in.mkv out.mp4

  # join the existing name "encoder" with whatever limit it was created with (the name may
  # also come first, as with flock)
  procthrottle run encoder -- ffmpeg -i b.mkv b.mp4

  # give up after 60 s of waiting for a permit: exit code 75 instead of the default 124
  procthrottle run --name db-backup --limit 1 --timeout 60 -E 75 -- ./backup.sh

  # in a loop: start 20 jobs, 4 run at a time
  for f in *.csv; do procthrottle run --name load --limit 4 -- ./load "$f" & done; wait

  procthrottle list                    # this user's semaphores
  procthrottle status encoder          # limit, free permits, holders (and encoder.rate)
  procthrottle status encoder --json
  procthrottle unlink encoder          # remove it from the host

The permit is crash-safe: if procthrottle is killed, even by SIGKILL, the kernel returns it
(and the command is sent SIGTERM). SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to procthrottle
are forwarded to the command once; Ctrl-C in a terminal reaches the command directly.

exit codes: the command's own (128+N if signal N killed it); 124 (or -E CODE) when no permit
came in time; 125 when procthrottle itself failed (e.g. the name was unlinked while waiting);
126 when the command cannot run; 127 when it is not found; 2 for bad arguments; 130 when
interrupted while waiting. status and unlink exit 1 when there is no such name.
"""


def version() -> str:
    """The installed distribution's version, from its metadata."""
    from importlib import metadata  # only for --version: it costs a third of a `run`

    try:
        return metadata.version("procthrottle")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown (not installed)"


def _name(value: str) -> str:
    try:
        return str(check_name(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"limit must be an integer, got {value!r}") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"limit must be >= 1, got {value!r}")
    if limit > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"limit must be at most {2**31 - 1}, got {value!r}")
    return limit


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"timeout must be a number of seconds, got {value!r}"
        ) from None
    if math.isnan(seconds):
        raise argparse.ArgumentTypeError("timeout must be a number of seconds, not nan")
    if seconds < 0:
        raise argparse.ArgumentTypeError(
            f"timeout must be >= 0 seconds, got {value!r} (use --no-wait not to wait)"
        )
    return seconds


def _exit_code(value: str) -> int:
    try:
        code = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"exit code must be an integer, got {value!r}") from None
    if not 0 <= code <= 255:
        raise argparse.ArgumentTypeError(f"exit code must be 0 to 255, got {value!r}")
    return code


def _rate(value: str) -> str:
    """``--rate``: checked by the rate limiter's own parser (one grammar everywhere)."""
    from .._rate import parse_rate

    try:
        parse_rate(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


class _Version(argparse.Action):
    """``--version``, reading the version only when asked (argparse's needs it up front)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str = "show the version and exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"procthrottle {version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line on stderr, exit code 2."""
        self.exit(2, f"procthrottle: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``procthrottle`` parser: ``run``, ``status``, ``list`` and ``unlink``."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="procthrottle",
        description="Run commands while holding a permit of a host-wide, crash-safe semaphore.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    run = commands.add_parser("run", help="run CMD while holding one permit of NAME",
                              usage="%(prog)s [NAME | --name NAME] [options] -- CMD [ARGS...]",
                              epilog=EPILOG, formatter_class=formatter)
    run.add_argument("--name", type=_name,
                     help="the semaphore's host-wide name (or give NAME first: run NAME -- CMD)")
    run.add_argument(
        "--limit", type=_limit, metavar="K",
        help="permits, when the name is created; leave out to join an existing name "
        f"(at most {MAX_LIMIT})",
    )
    run.add_argument("--rate", type=_rate, metavar="R",
                     help="also start at most R commands per unit of time: 10/s, 600/min, 5000/h")
    wait = run.add_mutually_exclusive_group()
    wait.add_argument("--timeout", type=_timeout, metavar="S",
                      help="wait at most S seconds for a permit (inf: forever, the default)")
    wait.add_argument("--no-wait", dest="wait", action="store_false",
                      help="do not wait: exit 124 (or -E CODE) if no permit is free")
    run.add_argument("--wait", dest="wait", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("-E", "--conflict-exit-code", type=_exit_code, metavar="CODE",
                     help="exit with CODE instead of 124 when no permit came in time")
    run.add_argument(
        "--no-crash-safe", dest="crash_safe", action="store_false",
        help="no undo: a permit may be released by another process, but a permit held by a "
        "killed procthrottle is lost",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    status = commands.add_parser("status", help="print limit, free permits and holders of NAME")
    status.add_argument("name", type=_name)
    status.add_argument("--json", action="store_true", help="print one JSON object per kind")
    listing = commands.add_parser("list", help="list this user's named semaphores")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    unlink = commands.add_parser("unlink", help="remove NAME from the host")
    unlink.add_argument("name", type=_name)
    return parser
