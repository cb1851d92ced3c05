"""``alknet policy check`` and ``alknet policy test``: dry runs of the forwarding policy (cli.md §7)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.context import Context
from alknet.cli.errors import EXIT_RUNTIME, UsageError
from alknet.cli.state import config_sources
from alknet.core.auth.identity import Identity, KeyOptions, validate_scope
from alknet.core.auth.keys import is_fingerprint, parse_public_key
from alknet.core.config.reloader import LoadedConfig
from alknet.core.errors import KeyFormatError
from alknet.core.policy.canon import IPAddress
from alknet.core.policy.forwarding import evaluate_open, run_policy_tests
from alknet.core.policy.grammar import Decision, bind_from_text, request_from_text
from alknet.core.policy.report import check_exit_code, format_check_line, format_summary

__all__ = ["register"]

_TRANSPORTS = ("tcp", "tls", "quic", "iroh")
_CHECK_PROG = "alknet policy check"


def _scope(text: str) -> str:
    try:
        return validate_scope(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _add_policy_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--authorized-keys",
        metavar="PATH",
        help="authorised keys and CA lines (default: $ALKNET_AUTHORIZED_KEYS, [auth] in --config, <state>/authorized_keys)",
    )
    p.add_argument(
        "--cert-authority",
        metavar="PATH",
        help="CA public keys, one per line (default: $ALKNET_CERT_AUTHORITY, else [auth] cert_authorities)",
    )
    p.add_argument(
        "--forwarding-default",
        choices=("allow", "deny"),
        help="default action when no rule matches (default: $ALKNET_FORWARDING_DEFAULT, [forwarding], allow)",
    )


def register(sub: Any, add_globals: AddGlobals) -> None:
    group = add_command(
        sub,
        "policy",
        add_globals,
        help="dry-run the forwarding policy (check one request, or run [[forwarding.tests]])",
    )
    inner = group.add_subparsers(dest="policy_command", metavar="COMMAND", parser_class=type(group))

    check = add_command(
        inner,
        "check",
        add_globals,
        prog_prefix="alknet policy",
        help="decide one channel open or remote-forward bind, as the server would",
        description=(
            "Decide one channel open (or, with --bind, one remote-forward bind) with the forwarding policy of\n"
            "--config plus the auth and policy flags; no server is needed. Prints one line:\n"
            '  allow rule=2 target="db.internal:5432" | deny default | refused reason=invalid_target |\n'
            "  needs-address rule=4\n"
            "Exit codes: 0 allow, 1 deny or refused, 2 usage or config error, 3 an address rule was reached\n"
            "and the decision needs a DNS answer (give --address or --resolve)."
        ),
    )
    check.add_argument(
        "--target",
        required=True,
        metavar="HOST:PORT|[V6]:PORT|unix:PATH",
        help="destination of the channel open, or the bind address with --bind",
    )
    check.add_argument(
        "--identity",
        dest="check_identity",
        metavar="SHA256:FP|PUBKEY_FILE",
        help="identity whose id (and, without --scope, configured scopes and key options) are used "
        "(default: id '-', no scopes)",
    )
    check.add_argument(
        "--scope",
        action="append",
        type=_scope,
        metavar="S",
        help="use this scope instead of resolving the identity (repeatable)",
    )
    check.add_argument(
        "--transport", choices=_TRANSPORTS, default="tcp", help="transport kind (default: tcp)"
    )
    check.add_argument("--bind", action="store_true", help="evaluate as a remote-forward bind (listen rules)")
    dns = check.add_mutually_exclusive_group()
    dns.add_argument(
        "--address",
        action="append",
        type=_address,
        metavar="IP",
        help="simulated DNS answer for a host name target (repeatable, in resolver order)",
    )
    dns.add_argument(
        "--resolve",
        action="store_true",
        help="resolve a host name target with the local resolver, as the server would",
    )
    _add_policy_sources(check)
    check.set_defaults(_run=run_check)

    test = add_command(
        inner,
        "test",
        add_globals,
        prog_prefix="alknet policy",
        help="run every [[forwarding.tests]] of the config file",
        description=(
            "Run every [[forwarding.tests]] entry of --config against the global forwarding policy, print\n"
            "'ok N ...' or 'FAIL N ... expected X got Y (rule R)' per test and a final 'N passed, N failed'.\n"
            "Exit 0 only when all pass (no tests: exit 0 with a warning), 1 when any fails, 2 on a config error.\n"
            "'alknet serve' runs the same tests at start and on every reload."
        ),
    )
    _add_policy_sources(test)
    test.set_defaults(_run=run_test)


def _load(args: argparse.Namespace, ctx: Context, *, check_tests: bool) -> LoadedConfig:
    sources = config_sources(ctx, args)
    loaded = sources.load(check_tests=check_tests)
    for warning in loaded.warnings:
        ctx.warn(warning)
    return loaded


def _identity_id(text: str) -> str:
    if text.startswith("SHA256:") or text.lower().startswith(("sha256:", "md5:")):
        if not is_fingerprint(text):
            raise UsageError(f"--identity: malformed fingerprint {text!r}", _CHECK_PROG)
        return text
    path = Path(text).expanduser()
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"--identity: cannot read {path}: {getattr(exc, 'strerror', None) or exc}", _CHECK_PROG
        ) from None
    try:
        return parse_public_key(data.strip()).fingerprint
    except KeyFormatError as exc:
        raise UsageError(f"--identity: {path}: {exc}", _CHECK_PROG) from None


async def _system_resolver(name: str) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if addr not in seen:
            seen.append(addr)
    return seen


def run_check(args: argparse.Namespace, ctx: Context) -> int:
    loaded = _load(args, ctx, check_tests=False)
    dynamic = loaded.dynamic
    ident_id = "-"
    scopes: tuple[str, ...] = tuple(args.scope or ())
    options = KeyOptions()
    if args.check_identity:
        ident_id = _identity_id(args.check_identity)
        if not args.scope:
            entry = dynamic.auth.key(ident_id)
            if entry is None:
                ctx.warn("identity not found in auth config; evaluating with no scopes")
            else:
                scopes, options = entry.scopes, entry.options
    identity = Identity(ident_id, scopes)
    proxy = loaded.static is not None and loaded.static.proxy is not None
    policy = dynamic.forwarding
    try:
        if args.bind:
            host, port = bind_from_text(args.target)
        else:
            request = request_from_text(args.target)
    except ValueError as exc:
        raise UsageError(f"--target: {exc}", _CHECK_PROG) from None
    decision: Decision
    if args.bind:
        decision = policy.evaluate_bind(host, port, identity, args.transport, options=options)
    elif args.address:
        decision = policy.evaluate(
            request, identity, args.transport, options=options, addresses=tuple(args.address), proxy=proxy
        )
    else:
        resolver = _system_resolver if args.resolve else None
        try:
            decision = asyncio.run(
                evaluate_open(
                    policy, request, identity, args.transport, options=options, resolver=resolver, proxy=proxy
                )
            )
        except OSError:
            ctx.out("deny reason=name_resolution_failed")
            return EXIT_RUNTIME
    ctx.out(format_check_line(decision, args.target))
    return check_exit_code(decision)


def run_test(args: argparse.Namespace, ctx: Context) -> int:
    loaded = _load(args, ctx, check_tests=False)
    proxy = loaded.static is not None and loaded.static.proxy is not None
    results = run_policy_tests(loaded.dynamic.forwarding, proxy=proxy)
    if not results:
        ctx.warn("no [[forwarding.tests]] in the configuration")
    for result in results:
        ctx.out(result.line)
    ctx.out(format_summary(results))
    return 0 if all(r.passed for r in results) else EXIT_RUNTIME
