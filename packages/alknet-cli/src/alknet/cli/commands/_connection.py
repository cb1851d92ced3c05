"""The connection options shared by ``connect``, ``call``, ``worker`` and ``status`` (cli.md §3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alknet.cli.commands._common import at_least, positive_float
from alknet.cli.context import Context
from alknet.cli.errors import UsageError
from alknet.cli.keyfile import load_identity_key
from alknet.core.auth.keys import private_key_to_openssh
from alknet.core.config.static import StaticConfig
from alknet.core.ssh.client import ClientOptions
from alknet.core.state import IDENTITY_KEY

__all__ = ["add_connection_options", "client_options"]

_TRANSPORTS = ("tcp", "tls", "quic", "iroh")


def add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection options")
    g.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help="server address for tcp and tls (env ALKNET_SERVER; default port 2222 for tcp, 2443 for tls)",
    )
    g.add_argument(
        "--transport", choices=_TRANSPORTS, help="transport to the server (env ALKNET_TRANSPORT; default tcp)"
    )
    g.add_argument(
        "--peer",
        metavar="ID[@HOST:PORT,...]",
        help="endpoint id pin and direct addresses (quic, iroh; env ALKNET_PEER)",
    )
    g.add_argument(
        "--identity",
        metavar="PATH",
        help="OpenSSH Ed25519 private key (env ALKNET_IDENTITY; default <state>/id_ed25519)",
    )
    g.add_argument(
        "--user", metavar="NAME", help="SSH user name; matters for certificate principals (default alknet)"
    )
    g.add_argument(
        "--host-key",
        metavar="SHA256:FP",
        help="pin the server host key (env ALKNET_HOST_KEY; default: <state>/known_hosts, trust on first use)",
    )
    g.add_argument(
        "--insecure-host-key",
        action="store_true",
        help="accept any server host key (a WARNING on every connect)",
    )
    g.add_argument(
        "--proxy",
        metavar="URL",
        help=(
            "Reach the alknet server through this SOCKS5 or HTTP CONNECT proxy (tcp and tls transports only). "
            "This does not change where tunnelled traffic leaves the network; that is the server's --proxy."
        ),
    )
    g.add_argument(
        "--iroh-relay",
        action="append",
        metavar="default|disabled|URL",
        help="relays for the client endpoint (iroh; env ALKNET_IROH_RELAY)",
    )
    g.add_argument("--tls-server-name", metavar="NAME", help="TLS SNI (default: the server host name)")
    g.add_argument("--tls-ca", metavar="PATH", help="verify the server certificate with this private CA")
    g.add_argument(
        "--tls-pin",
        metavar="HEX",
        help="SHA-256 of the server certificate (64 hex, colons allowed); no CA or name check",
    )
    g.add_argument(
        "--tls-insecure", action="store_true", help="no TLS certificate check (a WARNING on each connect)"
    )
    g.add_argument(
        "--keepalive", type=positive_float, metavar="SECS", help="SSH keepalive interval (default 15)"
    )
    g.add_argument(
        "--keepalive-count",
        type=at_least(1),
        metavar="N",
        help="missed keepalives before the connection is dead (default 3)",
    )
    g.add_argument(
        "--connect-timeout",
        type=positive_float,
        metavar="SECS",
        help="transport plus SSH handshake limit (default 10)",
    )


def client_options(args: argparse.Namespace, ctx: Context, static: StaticConfig, prog: str) -> ClientOptions:
    """Check the conflicts of cli.md §3 and build ``ClientOptions`` (the identity loaded into memory, asking
    for its passphrase on a terminal)."""
    client = static.client
    transport = client.transport
    if args.host_key and args.insecure_host_key:
        raise UsageError("--host-key conflicts with --insecure-host-key", prog)
    if sum(bool(x) for x in (args.tls_ca, args.tls_pin or client.tls_pin, args.tls_insecure)) > 1:
        raise UsageError("use only one of --tls-ca, --tls-pin and --tls-insecure", prog)
    if transport in ("quic", "iroh"):
        raise UsageError(
            f"the {transport} transport is not available yet in this release (use tcp or tls)", prog
        )
    if client.peer:
        raise UsageError(f"--peer is only for quic and iroh, not {transport}", prog)
    if transport != "tls" and (args.tls_ca or args.tls_pin or args.tls_insecure or args.tls_server_name):
        raise UsageError("--tls-* options need --transport tls", prog)
    if not client.server:
        raise UsageError(f"--server is required for {transport}", prog)
    path = client.identity or (static.state_dir / IDENTITY_KEY)
    if not Path(path).exists():
        raise UsageError(f"no identity key at {path}: run 'alknet keygen' or pass --identity", prog)
    key = load_identity_key(Path(path))
    return ClientOptions(
        server=client.server,
        identity=private_key_to_openssh(key),
        transport=transport,
        user=client.user,
        host_key=client.host_key,
        insecure_host_key=bool(args.insecure_host_key),
        state_dir=static.state_dir,
        tls_server_name=client.tls_server_name,
        tls_ca=args.tls_ca,
        tls_pin=client.tls_pin,
        tls_insecure=bool(args.tls_insecure),
        proxy=client.proxy,
        connect_timeout=args.connect_timeout or 10.0,
        keepalive_interval=args.keepalive or 15.0,
        keepalive_count_max=args.keepalive_count or 3,
    )
