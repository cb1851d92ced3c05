"""``alknet token``: mint a signed timestamp token for non-SSH interfaces (cli.md §6)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.context import Context
from alknet.cli.errors import UsageError
from alknet.cli.keyfile import load_identity_key
from alknet.cli.state import state_dir_for
from alknet.core.auth.token import mint_token
from alknet.core.state import IDENTITY_KEY

__all__ = ["register"]


def _unix_seconds(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid unix time {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"unix time out of range: {text}")
    return value


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "token",
        add_globals,
        help="mint a signed timestamp token for non-SSH interfaces",
        description=(
            "Print one token (139 characters, base64url) signed by an Ed25519 identity key, for the raw-framing\n"
            "interface's auth.token frame. A token is valid for auth.token.max_age seconds (default 300) around\n"
            "its timestamp. The token is printed on stdout only, never logged."
        ),
    )
    p.add_argument(
        "--identity",
        metavar="PATH",
        help="OpenSSH Ed25519 private key (default: $ALKNET_IDENTITY, else <state>/id_ed25519)",
    )
    p.add_argument(
        "--at",
        metavar="UNIX_SECONDS",
        type=_unix_seconds,
        help="timestamp to sign, for testing and clock-skewed hosts (default: now)",
    )
    p.set_defaults(_run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    source = args.identity or ctx.env.get("ALKNET_IDENTITY") or None
    path = Path(source).expanduser() if source else state_dir_for(ctx) / IDENTITY_KEY
    if not path.exists():
        raise UsageError(f"no identity key at {path}: run 'alknet keygen' or pass --identity", "alknet token")
    key = load_identity_key(path)
    ts = int(time.time()) if args.at is None else args.at
    ctx.out(mint_token(key, ts))
    return 0
