"""Exit codes of the command line and the one exception that carries one."""

from __future__ import annotations

EXIT_NOT_FOUND_NAME = 1  # status / unlink: no such semaphore
EXIT_USAGE = 2  # bad arguments, or a name that cannot be opened as asked
EXIT_CONFLICT = 124  # no permit in time (--timeout, --no-wait); -E CODE changes it
EXIT_FAILED = 125  # procthrottle itself failed (semaphore unlinked while waiting, OS error)
EXIT_CANNOT_RUN = 126  # the command cannot be executed (not executable, a directory)
EXIT_NOT_FOUND = 127  # the command was not found
EXIT_INTERRUPTED = 130  # 128 + SIGINT: interrupted while waiting for a permit


class CliError(Exception):
    """An error to report as one line on stderr, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
