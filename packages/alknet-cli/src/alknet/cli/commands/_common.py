"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["AddGlobals", "add_command"]

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
