"""``alknet`` entry point: argument parsing, global flags, and the error/exit-code conventions of cli.md §1.

``main(argv)`` never calls ``sys.exit``; it returns the exit code, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from alknet.cli.context import Context
from alknet.cli.errors import EXIT_USAGE, CliError, UsageError
from alknet.cli.version import version_line
from alknet.core.errors import ConfigError, KeyFormatError

__all__ = ["main"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, help=str(kwargs.get("help", "")))

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> NoReturn:
        sys.stdout.write(version_line() + "\n")
        raise _ParserExit(0)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so errors follow the one-line convention."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


def _add_global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global flags, accepted before or after the subcommand name (defaults only on the top-level parser)."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument(
        "--version", action=_VersionAction, help="print the versions of all alknet distributions and exit"
    )
    g.add_argument(
        "--config",
        metavar="PATH",
        default=d(None),
        help="TOML configuration file (default: $ALKNET_CONFIG, else none)",
    )
    g.add_argument(
        "--state-dir",
        metavar="PATH",
        default=d(None),
        help="state directory (default: $ALKNET_HOME, else state_dir in --config, else the platform data dir)",
    )
    g.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default=d(None),
        help="stderr log threshold (default: $ALKNET_LOG_LEVEL, else info)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=d(False),
        help="same as --log-level debug, and print Python tracebacks on errors",
    )
    g.add_argument(
        "--quiet", action="store_true", default=d(False), help="no banner or informational output on stdout"
    )
    g.add_argument(
        "--log-time",
        choices=("auto", "never"),
        default=d("auto"),
        help="auto: a leading time= field unless JOURNAL_STREAM is set (journald); never: no time= field",
    )


def build_parser() -> Parser:
    # Imported here, inside main()'s error handling: the commands pull in asyncssh and friends (over a
    # second on a slow machine), and a Ctrl-C during that import must still end as "interrupted", exit 1.
    from alknet.cli.commands import COMMANDS

    parser = Parser(
        prog="alknet",
        description="alknet: private networking over one authenticated SSH session.",
        epilog="Run 'alknet <command> --help' for the options of a command.",
    )
    _add_global_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(sub, lambda p: _add_global_flags(p, suppress=True))
    return parser


def _command_prog(args: argparse.Namespace) -> str:
    return str(getattr(args, "_prog", "alknet"))


def _print_error(message: str) -> None:
    sys.stderr.write(f"alknet: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ALKNET_DEBUG", "") == "1"
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognised argument {extra[0]}", _command_prog(args))
        func = getattr(args, "_run", None)
        if func is None:
            if args.command is None:
                parser.print_help(sys.stdout)
                return 0
            raise UsageError("missing subcommand", _command_prog(args))
        ctx = Context.from_args(args)
        debug = ctx.debug
        return int(func(args, ctx))
    except _ParserExit as exc:
        return exc.status
    except UsageError as exc:
        prog = exc.command or "alknet"
        _print_error(f"{exc.message} (see '{prog} --help')")
        return exc.code
    except CliError as exc:
        if debug:
            traceback.print_exc()
        _print_error(exc.message)
        return exc.code
    except (ConfigError, KeyFormatError) as exc:
        if debug:
            traceback.print_exc()
        _print_error(str(exc))
        if debug and isinstance(exc, ConfigError):
            for extra_error in exc.errors[1:]:
                _print_error(extra_error)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 1
    except Exception as exc:  # the one place that turns any failure into one line
        if debug:
            traceback.print_exc()
        _print_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        return 1
