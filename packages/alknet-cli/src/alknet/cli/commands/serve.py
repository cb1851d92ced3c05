"""``alknet serve``: run a head with its listeners (cli.md §2; first run and banner: overview.md §7)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alknet.cli.commands._common import AddGlobals, add_command, at_least, positive_float
from alknet.cli.context import Context
from alknet.cli.errors import CliError, UsageError
from alknet.cli.runner import run_until_stopped, setup_cli_logging
from alknet.cli.state import config_sources
from alknet.core import __version__ as core_version
from alknet.core import logfmt
from alknet.core.auth.keys import generate_private_key, load_private_key, write_keypair
from alknet.core.config.reloader import ConfigReloader, log_config_warnings, warn_if_no_authorized_keys
from alknet.core.config.static import StaticConfig
from alknet.core.errors import ConfigError
from alknet.core.ssh.server import SshServer, SshServerOptions
from alknet.core.state import (
    AUTHORIZED_KEYS,
    check_private_file,
    check_state_dir_permissions,
    ensure_state_dir,
)
from alknet.core.tls.context import ServerContexts, log_certificate
from alknet.core.transport.base import BindError

if TYPE_CHECKING:
    from alknet.core.raw import RawListener

__all__ = ["register"]

_PROG = "alknet serve"
log = logging.getLogger("alknet.server")


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "serve",
        add_globals,
        help="run an alknet server (SSH over tcp/tls, SOCKS5/forward endpoint, stealth mode)",
        description=(
            "Run an alknet server. With no flags and no config it listens on tcp 127.0.0.1:2222, creates a host\n"
            "key and an empty authorized_keys in the state dir, and prints what to do next. Logs go to stderr\n"
            "(logfmt); SIGHUP reloads keys, policy and rate limits; SIGINT/SIGTERM stop it gracefully."
        ),
    )
    g = p.add_argument_group("listeners")
    g.add_argument(
        "--listen",
        action="append",
        metavar="[KIND://]HOST:PORT",
        help="listen address (repeatable; KIND tcp or tls; IPv6 in brackets; env ALKNET_LISTEN, comma-separated). "
        "Default: one listener of --transport on 127.0.0.1 (tcp 2222, tls 2443)",
    )
    g.add_argument(
        "--transport",
        choices=("tcp", "tls", "quic", "iroh"),
        help="kind of --listen values without a scheme and of the default listener (default tcp)",
    )
    g.add_argument(
        "--insecure-plaintext", action="store_true", help="allow raw+tcp listeners on non-loopback addresses"
    )
    g.add_argument(
        "--stealth",
        action="store_true",
        help="stealth mode on every tls listener: non-SSH clients get nginx's 404",
    )
    g.add_argument(
        "--stealth-timeout", type=positive_float, metavar="SECS", help="stealth peek timeout (default 10)"
    )
    g.add_argument(
        "--tls-cert", metavar="PATH", help="PEM certificate chain for tls listeners (default: self-signed)"
    )
    g.add_argument("--tls-key", metavar="PATH", help="PEM private key for --tls-cert")
    a = p.add_argument_group("keys and auth")
    a.add_argument(
        "--key",
        metavar="PATH",
        help="SSH host key, OpenSSH Ed25519 (default <state>/host_key, created if missing)",
    )
    a.add_argument(
        "--authorized-keys",
        metavar="PATH",
        help="authorised keys and CA lines (default <state>/authorized_keys, created empty; env ALKNET_AUTHORIZED_KEYS)",
    )
    a.add_argument(
        "--cert-authority", metavar="PATH", help="CA public keys, one per line (env ALKNET_CERT_AUTHORITY)"
    )
    a.add_argument(
        "--no-token-auth", action="store_true", help="disable signed-token auth for non-SSH interfaces"
    )
    f = p.add_argument_group("forwarding and limits")
    f.add_argument(
        "--proxy",
        metavar="URL",
        help=(
            "Send every outbound tunnel connection (the data plane) through this SOCKS5 or HTTP CONNECT proxy, e.g. "
            "socks5://127.0.0.1:9050. Targets are resolved by the proxy. On 'alknet connect' the same flag means "
            "something else: it carries the client's own connection to the server."
        ),
    )
    f.add_argument(
        "--forwarding-default",
        choices=("allow", "deny"),
        help="default action of the forwarding policy (env ALKNET_FORWARDING_DEFAULT; default allow)",
    )
    f.add_argument(
        "--max-connections-per-ip",
        type=at_least(0),
        metavar="N",
        help="concurrent connections per client IP, 0 = unlimited (env ALKNET_MAX_CONNECTIONS_PER_IP; default 0)",
    )
    f.add_argument(
        "--max-auth-attempts",
        type=at_least(0),
        metavar="N",
        help="failed auth attempts before disconnect, 0 = unlimited (env ALKNET_MAX_AUTH_ATTEMPTS; default 10)",
    )
    f.add_argument(
        "--login-timeout", type=positive_float, metavar="SECS", help="auth phase limit (default 30)"
    )
    f.add_argument(
        "--connect-timeout", type=positive_float, metavar="SECS", help="outbound connect limit (default 10)"
    )
    f.add_argument(
        "--keepalive", type=positive_float, metavar="SECS", help="server keepalive interval (default 15)"
    )
    f.add_argument(
        "--keepalive-count", type=at_least(0), metavar="N", help="missed keepalives before drop (default 3)"
    )
    p.set_defaults(_run=run)


def _prepare_state(static: StaticConfig, explicit_key: bool) -> tuple[Path, bool]:
    """Create the state dir, the host key (default path only) and an empty authorized_keys; check modes."""
    state = static.state_dir
    existed = state.exists()
    ensure_state_dir(state)
    if existed:
        check_state_dir_permissions(state)
    key_path = static.host_key_path
    created = False
    if not key_path.exists():
        if explicit_key:
            raise ConfigError(f"host key {key_path} does not exist")
        write_keypair(key_path, generate_private_key(), "alknet-host")
        created = True
    check_private_file(key_path)
    ak = state / AUTHORIZED_KEYS
    if not ak.exists():
        fd = os.open(ak, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    return key_path, created


def _banner(
    static: StaticConfig,
    server: SshServer,
    tls: dict[int, ServerContexts],
    created: bool,
    keys: int,
    raw: Sequence[RawListener] = (),
) -> str:
    fp = server.host_key_fingerprint
    state = static.state_dir
    ak = state / AUTHORIZED_KEYS
    lines = [f"alknet serve {core_version} ready", f"  state dir   {state}"]
    lines.append(f"  host key    {fp} (ssh-ed25519, {'new' if created else 'existing'})")
    connect: list[str] = []
    for index, (listener, addrs) in enumerate(server.listeners):
        spec = listener.spec
        for hostport in addrs:
            extra = ""
            addr = f"{spec.kind} {hostport}"
            if spec.kind == "tls":
                ctx = tls.get(index)
                if ctx is not None:
                    extra = f"   sha256 {ctx.fingerprint}"
            if spec.is_loopback and spec.kind == "tcp":
                extra += f"   (loopback only; use --listen 0.0.0.0:{hostport.rsplit(':', 1)[1]} to accept remote clients)"
            lines.append(f"  listening   {addr}{extra}")
            if spec.kind == "tls":
                pin = tls[index].fingerprint if index in tls and spec.tls_cert is None else None
                flag = f" --transport tls --tls-pin {pin}" if pin else " --transport tls"
                connect.append(f"  alknet connect --server {hostport}{flag} --host-key {fp}")
            else:
                connect.append(f"  alknet connect --server {hostport} --host-key {fp}")
    for raw_listener in raw:
        for addr in raw_listener.listen_addrs:
            lines.append(
                f"  listening   {addr.replace('://', ' ', 1)}   (call protocol, token auth: alknet token)"
            )
    lines.append("  storage     not in this release (alknet-storage is a skeleton)")
    lines.append(f"  auth        {keys} authorised keys ({ak})")
    lines.append("")
    lines.append("Authorise a client: append its public key line (ssh-ed25519 AAAA...) to")
    lines.append(f"  {ak}")
    if hasattr(signal, "SIGHUP"):
        lines.append(f"and reload with:  kill -HUP {os.getpid()}")
    else:
        lines.append("and restart alknet serve")
    lines.append(
        "A client without a key creates one with:  alknet keygen   (then copy the line of its .pub file)"
    )
    lines.append("")
    lines.append("Connect:")
    lines.extend(connect)
    return "\n".join(lines)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.tls_cert and not args.tls_key:
        raise UsageError("--tls-cert needs --tls-key", _PROG)
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key needs --tls-cert", _PROG)
    sources = config_sources(ctx, args, check_server_files=True)
    static = sources.load_static()
    for spec in static.listeners:
        if spec.kind in ("quic", "iroh"):
            raise UsageError(f"{spec.url}: this listener kind is not available yet in this release", _PROG)
        if spec.acme_domains:
            raise UsageError("ACME certificates are not available yet in this release", _PROG)
    if args.stealth and not any(s.kind == "tls" for s in static.listeners):
        raise UsageError("--stealth needs a tls listener", _PROG)
    explicit_key = static.host_key is not None
    key_path, created = _prepare_state(static, explicit_key)
    load_private_key(key_path)  # refuse a bad key before anything binds
    loaded = sources.load()
    setup_cli_logging(ctx)
    log_config_warnings(loaded, log)
    warn_if_no_authorized_keys(loaded.dynamic, static.auth_provider, log)
    tls: dict[int, ServerContexts] = {}
    for index, spec in enumerate(static.listeners):
        if spec.kind == "tls":
            if spec.tls_cert is not None and spec.tls_key is not None:
                tls[index] = ServerContexts.from_files(spec.tls_cert, spec.tls_key)
            else:
                tls[index] = ServerContexts.self_signed(static.state_dir)
    for contexts in {id(c): c for c in tls.values()}.values():
        log_certificate(log, contexts.current)
    from alknet.core.api import head_node  # the call protocol loads only when serve runs
    from alknet.core.call.channel import ChannelLimits

    reloader = ConfigReloader.from_loaded(loaded, sources, log)
    server = SshServer(SshServerOptions.from_static(static, host_key=key_path, tls=tls), reloader, logger=log)
    node = head_node(server, limits=ChannelLimits(max_frame=static.max_frame))
    server.control.install(node.serve_channel)  # alknet-control channels: calls, routing, pubsub
    keys = len(loaded.dynamic.auth.keys) + len(loaded.dynamic.auth.cas)

    from alknet.core.raw import RawListener

    raw = [
        RawListener(
            spec,
            node,
            server.provider,
            server.dynamic,
            server.limiter,
            insecure_plaintext=spec.insecure_plaintext,
        )
        for spec in static.listeners
        if spec.interface == "raw"
    ]

    async def main(stop: asyncio.Event) -> int:
        try:
            for listener in raw:  # raw+tcp: the call protocol with token auth, no SSH
                await listener.start()
            if any(spec.interface == "ssh" for spec in static.listeners):
                await server.start()
        except (BindError, ConfigError) as exc:
            for listener in raw:
                await listener.close()
            await server.close(drain=0)
            if isinstance(exc, BindError):
                raise CliError(str(exc)) from None
            raise
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            with contextlib.suppress(ConfigError):  # logged by the reloader; the old config stays
                await server.reload()

        def on_hup() -> None:
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            if not ctx.quiet:
                sys.stdout.write(_banner(static, server, tls, created, keys, raw) + "\n")
                sys.stdout.flush()
            bound = len(server.listen_addrs) + sum(len(r.listen_addrs) for r in raw)
            logfmt.log_event(log, logging.INFO, "server ready", listeners=bound)
            await stop.wait()
        finally:
            if hasattr(signal, "SIGHUP"):
                loop.remove_signal_handler(signal.SIGHUP)
            for listener in raw:
                await listener.close()
            await server.close()
            await node.close()
        return 0

    return run_until_stopped(main)
