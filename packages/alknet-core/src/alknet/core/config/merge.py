"""The static merge: command-line overrides, environment and TOML tables -> ``StaticConfig``.

Precedence per key: CLI flag > environment > TOML > built-in default (`cli.md` §13).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alknet.core.config.checks import check_node, problem
from alknet.core.config.environment import EnvValues
from alknet.core.config.overrides import Overrides
from alknet.core.config.static import (
    DEFAULT_MAX_FRAME,
    LISTENER_KINDS,
    MAX_FRAME_RANGE,
    PROVIDERS,
    WORKER_SERVICES,
    ClientConfig,
    FlowgraphConfig,
    ListenerSpec,
    SecretConfig,
    StaticConfig,
    StorageConfig,
    Table,
    WorkerConfig,
    default_listener,
    listener_errors,
    listener_from_table,
    parse_listen,
    parse_relays,
    unique_errors,
    validate_proxy_url,
)

__all__ = ["build_static", "first"]


def first(*values: Any) -> Any:
    """The first value that is not ``None`` (the precedence rule), or ``None``."""
    return next((v for v in values if v is not None), None)


def build_static(
    tables: Mapping[str, Table | None],
    toml_listeners: list[Table] | None,
    base: Path,
    ov: Overrides,
    env: EnvValues,
    state_dir: Path,
    errors: list[str],
    label: str,
) -> StaticConfig:
    def table(name: str) -> Table:
        return tables[name] or Table({}, name, errors, label)

    srv = table("server")
    key = first(ov.key, srv.path("key", base))
    endpoint_key = first(ov.endpoint_key, srv.path("endpoint_key", base))
    proxy = srv.string("proxy", empty_none=True)
    if proxy is not None and (msg := problem(lambda: validate_proxy_url(str(proxy)))):
        srv.error("proxy", msg)
    timeouts = {n: srv.number(n) for n in ("login_timeout", "connect_timeout", "stealth_timeout")}
    keepalive = srv.number("keepalive_interval", positive=False)
    keepalive_count = srv.integer("keepalive_count", 1)
    max_frame = srv.integer("max_frame", *MAX_FRAME_RANGE)
    srv.finish()
    stealth_timeout = first(ov.stealth_timeout, timeouts["stealth_timeout"], 10.0)
    listeners = _merge_listeners(toml_listeners, base, ov, env, stealth_timeout, errors, label)

    auth = table("auth")
    provider = first(ov.identity_provider, auth.string("provider", choices=PROVIDERS), "config")
    sto = table("storage")
    storage = StorageConfig(
        enabled=False if ov.storage is False else first(sto.boolean("enabled"), True),
        busy_timeout_ms=first(sto.integer("busy_timeout_ms", 0), 5000),
        readers=first(sto.integer("readers", 1), 4),
    )
    fg = table("flowgraph")
    record = first(ov.record_calls, fg.boolean("record_calls"), False)
    flowgraph = FlowgraphConfig(enabled=first(fg.boolean("enabled"), False) or record, record_calls=record)
    off = "--no-storage" if ov.storage is False else "storage.enabled = false"
    if record and not storage.enabled and not (ov.record_calls and ov.storage is False):
        errors.append(f"{label}: flowgraph.record_calls: needs storage ({off})")
    if provider != "config" and not storage.enabled and not (ov.identity_provider and ov.storage is False):
        errors.append(f"{label}: auth.provider: {provider} needs storage ({off})")
    sec = table("secret")
    secret = SecretConfig(
        enabled=first(sec.boolean("enabled"), False),
        unlock_at_start=first(sec.boolean("unlock_at_start"), False),
        allow_remote_unlock=first(sec.boolean("allow_remote_unlock"), False),
        # secret.md: v1 (legacy) blobs are not supported; version N uses the hardened index N-2
        key_version=first(sec.integer("key_version", 2, 2**31 + 1), 2),
    )
    client = _build_client(table("client"), base, ov, env)
    wk = table("worker")
    node = wk.string("node", empty_none=True)
    if node is not None and (msg := problem(lambda: check_node(str(node)))):
        wk.error("node", msg)
    services = wk.strings("services")
    if services is not None and (bad := [s for s in services if s not in WORKER_SERVICES]):
        wk.error("services", f"unknown service {bad[0]!r} ({', '.join(WORKER_SERVICES)})")
    worker = WorkerConfig(
        node=first(ov.node, env.node, node),
        services=first(ov.services, services, ()),
        modules=first(ov.modules, wk.strings("modules"), ()),
    )
    for name in ("storage", "flowgraph", "secret", "worker"):
        table(name).finish()
    return StaticConfig(
        state_dir=state_dir,
        listeners=listeners,
        host_key=key,
        endpoint_key=endpoint_key,
        proxy=first(ov.proxy, proxy),
        login_timeout=first(ov.login_timeout, timeouts["login_timeout"], 30.0),
        connect_timeout=first(ov.connect_timeout, timeouts["connect_timeout"], 10.0),
        keepalive_interval=first(ov.keepalive, keepalive, 15.0),
        keepalive_count=first(ov.keepalive_count, keepalive_count, 3),
        stealth_timeout=stealth_timeout,
        max_frame=first(max_frame, DEFAULT_MAX_FRAME),
        auth_provider=provider,
        storage=storage,
        flowgraph=flowgraph,
        secret=secret,
        client=client,
        worker=worker,
    )


def _build_client(t: Table, base: Path, ov: Overrides, env: EnvValues) -> ClientConfig:
    s = {n: t.string(n, empty_none=True) for n in ("server", "peer", "user", "host_key", "socks5")}
    s |= {n: t.string(n, empty_none=True) for n in ("tls_server_name", "tls_pin", "proxy")}
    transport = t.string("transport", choices=LISTENER_KINDS)
    identity = t.path("identity", base)
    forwards, remote = t.strings("forwards"), t.strings("remote_forwards")
    t.finish()
    return ClientConfig(
        server=first(ov.server, env.server, s["server"]),
        transport=first(ov.transport, env.transport, transport, "tcp"),
        peer=first(ov.peer, env.peer, s["peer"]),
        identity=first(ov.identity, env.identity, identity),
        user=first(ov.user, env.user, s["user"], "alknet"),
        host_key=first(ov.host_key, env.host_key, s["host_key"]),
        socks5=first(ov.socks5, s["socks5"], "127.0.0.1:1080"),
        forwards=first(ov.forwards, forwards, ()),
        remote_forwards=first(ov.remote_forwards, remote, ()),
        tls_server_name=first(ov.tls_server_name, s["tls_server_name"]),
        tls_pin=first(ov.tls_pin, s["tls_pin"]),
        proxy=first(ov.proxy, s["proxy"]),
        iroh_relay=parse_relays(first(ov.iroh_relay, env.iroh_relay, ())),
    )


def _merge_listeners(
    toml_listeners: list[Table] | None,
    base: Path,
    ov: Overrides,
    env: EnvValues,
    stealth_timeout: float,
    errors: list[str],
    label: str,
) -> tuple[ListenerSpec, ...]:
    specs: list[tuple[str, ListenerSpec]] = []
    kind = ov.transport or "tcp"
    where_all = "--listen" if ov.listen else "ALKNET_LISTEN" if env.listen else f"{label}: listeners"
    # the file's [[listeners]] are validated even when --listen/ALKNET_LISTEN replace them: a misspelt key
    # is reported, never ignored
    toml_specs = [(i, listener_from_table(t, base)) for i, t in enumerate(toml_listeners or (), 1)]
    if ov.listen or env.listen:
        source = ov.listen or env.listen or ()
        for value in source:
            where = f"--listen {value}" if ov.listen else "ALKNET_LISTEN"
            try:
                specs.append((where, parse_listen(value, default_kind=kind)))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
    elif toml_listeners:
        specs.extend((f"{label}: listeners[{i}]", spec) for i, spec in toml_specs if spec is not None)
    else:
        specs.append(("listener", default_listener(kind)))
    relays = first(ov.iroh_relay, env.iroh_relay)
    tls_flags: dict[str, Any] = {}
    if ov.tls_cert is not None and ov.tls_key is not None:
        tls_flags |= {"tls_cert": ov.tls_cert, "tls_key": ov.tls_key, "acme_domains": ()}
    if ov.acme_domains:  # --acme-agree-tos is checked at capture
        tls_flags |= {"acme_domains": ov.acme_domains, "tls_cert": None, "tls_key": None}
    if ov.acme_agree_tos:
        tls_flags["acme_agree_tos"] = True
    for name in ("acme_email", "acme_directory", "acme_ca_bundle", "acme_challenge", "acme_http_listen"):
        if (value := getattr(ov, name)) is not None:
            tls_flags[name] = value
    if ov.stealth:
        tls_flags["stealth"] = True
        if not any(spec.kind == "tls" for _, spec in specs):
            errors.append("--stealth needs a tls listener")
    out: list[ListenerSpec] = []
    for where, spec in specs:
        values: dict[str, Any] = {"stealth_timeout": stealth_timeout}
        if ov.insecure_plaintext:
            values["insecure_plaintext"] = True
        if spec.kind == "tls":
            values |= tls_flags
        if spec.kind == "iroh" and relays is not None:
            values["iroh_relays"] = parse_relays(relays)
        spec = dataclasses.replace(spec, **values)
        errors.extend(listener_errors(spec, where))
        out.append(spec)
    errors.extend(unique_errors(out, where_all))
    return tuple(out)
