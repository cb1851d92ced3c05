"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["AddGlobals", "add_command", "at_least", "positive_float"]

AddGlobals = Callable[[argparse.ArgumentParser], None]


def add_command(
    sub: Any,
    name: str,
    add_globals: AddGlobals,
    *,
    help: str,
    description: str | None = None,
    epilog: str | None = None,
    prog_prefix: str = "alknet",
) -> argparse.ArgumentParser:
    """Add a subcommand parser that carries the global flags and knows its own prog for usage hints."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_globals(parser)
    parser.set_defaults(_prog=f"{prog_prefix} {name}")
    return parser


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {text!r}")
        return value

    return parse
