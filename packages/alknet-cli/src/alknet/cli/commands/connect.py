"""``alknet connect``: one SSH connection kept up forever, serving SOCKS5 and forwards (cli.md §4)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.commands._connection import add_connection_options, client_options
from alknet.cli.context import Context
from alknet.cli.errors import CliError, UsageError
from alknet.cli.runner import run_until_stopped, setup_cli_logging
from alknet.cli.state import config_sources
from alknet.core.errors import ConfigError
from alknet.core.ssh.client import SshClient
from alknet.core.ssh.forwards import ListenError, parse_local_forward, parse_remote_forward
from alknet.core.ssh.known_hosts import HostKeyError
from alknet.core.ssh.session import SessionOptions, parse_listen_address, run_session

__all__ = ["register"]

_PROG = "alknet connect"


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "connect",
        add_globals,
        help="keep one SSH connection up and serve SOCKS5 and port forwards through it",
        description=(
            "Open one SSH connection to the server (an alknet server or a stock sshd) and keep it up: reconnects with\n"
            "backoff (1, 2, 4, ... 30 s) forever, while the SOCKS5 and -L listeners stay bound. Stops on\n"
            "SIGINT/SIGTERM (exit 0) or a host-key mismatch (exit 1). Forward targets are never logged.\n\n"
            "examples:\n"
            "  alknet connect --server example.com --host-key SHA256:...\n"
            "  alknet connect --server 127.0.0.1:2222 -L 5432:db.internal:5432 -R 8080:127.0.0.1:80\n"
            "  curl --socks5-hostname 127.0.0.1:1080 http://intranet.local/"
        ),
    )
    add_connection_options(p)
    g = p.add_argument_group("connect options")
    g.add_argument(
        "-D",
        "--socks5",
        metavar="ADDR:PORT",
        help="SOCKS5 listen address (default 127.0.0.1:1080; a non-loopback address is reachable from the network)",
    )
    g.add_argument("--no-socks5", action="store_true", help="do not run the SOCKS5 listener")
    g.add_argument(
        "-L",
        "--forward",
        action="append",
        metavar="[LADDR:]LPORT:RHOST:RPORT",
        help="local forward; LPORT 0 picks a free port; RHOST may be unix:/path (LPORT:unix:/path); repeatable",
    )
    g.add_argument(
        "-R",
        "--remote-forward",
        action="append",
        metavar="[RADDR:]RPORT:LHOST:LPORT",
        help="remote forward: the server listens (127.0.0.1 by default; RPORT 0 = server-chosen); repeatable",
    )
    p.set_defaults(_run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.no_socks5 and args.socks5:
        raise UsageError("--socks5 conflicts with --no-socks5", _PROG)
    static = config_sources(ctx, args).load_static()
    client = static.client
    try:
        socks5 = None if client.socks5 == "off" else parse_listen_address(client.socks5, what="--socks5")
        forwards = tuple(parse_local_forward(s) for s in client.forwards)
        remotes = tuple(parse_remote_forward(s) for s in client.remote_forwards)
    except ConfigError as exc:
        raise UsageError(str(exc), _PROG) from None
    options = client_options(args, ctx, static, _PROG)
    setup_cli_logging(ctx)
    ssh = SshClient(options)
    session = SessionOptions(socks5=socks5, forwards=forwards, remote_forwards=remotes)

    async def main(stop: asyncio.Event) -> int:
        try:
            await run_session(ssh, session, stop=stop)
        except (ListenError, HostKeyError) as exc:
            raise CliError(str(exc)) from None
        return 0

    return run_until_stopped(main)
