"""One module per subcommand; each has ``register(subparsers, add_globals)``."""

from __future__ import annotations

from types import ModuleType

from alknet.cli.commands import call, connect, keygen, policy, secret, serve, status, token, worker

__all__ = ["COMMANDS"]

COMMANDS: tuple[ModuleType, ...] = (serve, connect, keygen, token, policy, call, worker, status, secret)
