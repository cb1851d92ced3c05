"""One module per subcommand; each has ``register(subparsers, add_globals)``."""

from __future__ import annotations

from types import ModuleType

from alknet.cli.commands import connect, keygen, policy, secret, serve, token

__all__ = ["COMMANDS"]

COMMANDS: tuple[ModuleType, ...] = (serve, connect, keygen, token, policy, secret)
