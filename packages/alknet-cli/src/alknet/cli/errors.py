"""Errors the command line turns into one stderr line and an exit code (cli.md §1)."""

from __future__ import annotations

__all__ = ["EXIT_NEEDS_ADDRESS", "EXIT_RUNTIME", "EXIT_USAGE", "CliError", "UsageError"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NEEDS_ADDRESS = 3


class CliError(Exception):
    """A failure reported as ``alknet: error: <message>`` with ``code`` as the exit code."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    """A usage error: exit 2 and the hint ``(see 'alknet <cmd> --help')``."""

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message, EXIT_USAGE)
        self.command = command
