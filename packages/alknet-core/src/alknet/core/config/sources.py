"""Configuration sources: the ``--config`` TOML file, ``ALKNET_*`` variables and command-line overrides.

Precedence per key: CLI flag > environment > TOML > built-in default (`cli.md` §13). The flags and
variables are captured once (``ConfigSources(overrides, env)``); every ``load()`` re-reads the TOML file and
the files it names, so a reload (SIGHUP) applies the same overrides again. Everything is validated before
anything is returned.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.reloader import LoadedConfig, build_dynamic
from alknet.core.config.static import (
    DEFAULT_MAX_FRAME,
    LISTENER_KINDS,
    MAX_FRAME_RANGE,
    NODE_RE,
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
    resolve_path,
    server_file_errors,
    unique_errors,
    validate_proxy_url,
)
from alknet.core.errors import ConfigError
from alknet.core.state import resolve_state_dir

__all__ = ["ConfigSources", "EnvValues", "Overrides", "parse_env"]

_ACTIONS = ("allow", "deny")
_TOP_KEYS: tuple[str, ...] = ("state_dir", "server", "listeners", "auth", "rate_limits", "forwarding")
_TOP_KEYS += ("storage", "flowgraph", "secret", "client", "worker")


# ---------------------------------------------------------------------------------------------- overrides


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line values captured at start; ``None`` = flag not given. Paths are made absolute at capture.

    Build it with ``Overrides.from_namespace(args)`` (argparse dests as listed there) or directly.
    """

    config: Path | None = None
    state_dir: Path | None = None
    # serve
    listen: tuple[str, ...] | None = None
    transport: str | None = None  # serve: kind of scheme-less --listen values; clients: the transport
    insecure_plaintext: bool | None = None
    key: Path | None = None
    endpoint_key: Path | None = None
    authorized_keys: Path | None = None
    cert_authority: Path | None = None
    identity_provider: str | None = None
    token_auth: bool | None = None  # --no-token-auth -> False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    acme_domains: tuple[str, ...] | None = None
    acme_email: str | None = None
    acme_directory: str | None = None
    acme_ca_bundle: Path | None = None
    acme_challenge: str | None = None
    acme_http_listen: str | None = None
    acme_agree_tos: bool | None = None
    stealth: bool | None = None
    stealth_timeout: float | None = None
    iroh_relay: tuple[str, ...] | None = None
    proxy: str | None = None  # serve: data plane; clients: the connection to the server
    forwarding_default: str | None = None
    max_connections_per_ip: int | None = None
    max_auth_attempts: int | None = None
    login_timeout: float | None = None
    connect_timeout: float | None = None
    keepalive: float | None = None
    keepalive_count: int | None = None
    storage: bool | None = None  # --no-storage -> False
    record_calls: bool | None = None
    # clients and worker
    server: str | None = None
    peer: str | None = None
    identity: Path | None = None
    user: str | None = None
    host_key: str | None = None
    socks5: str | None = None  # --no-socks5 -> "off"
    forwards: tuple[str, ...] | None = None
    remote_forwards: tuple[str, ...] | None = None
    tls_server_name: str | None = None
    tls_pin: str | None = None
    node: str | None = None
    services: tuple[str, ...] | None = None
    modules: tuple[str, ...] | None = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, *, cwd: Path | None = None) -> Overrides:
        """Read the argparse dests named like the flags (``--max-auth-attempts`` -> ``max_auth_attempts``).

        Absent or ``None`` dests are "not given"; store_true flags count only when true; ``no_token_auth``,
        ``no_storage``, ``no_socks5`` invert; repeatable flags are ``acme_domain``, ``iroh_relay``,
        ``listen``, ``forward``, ``remote_forward``, ``service``, ``module``. Raises ``ConfigError`` naming
        the flag.
        """
        base = cwd or Path.cwd()
        values: dict[str, Any] = {}
        errors: list[str] = []
        for dest, (name, conv, flag) in _NAMESPACE.items():
            raw = getattr(ns, dest, None)
            if raw is None or raw is False or raw == []:
                continue
            try:
                values[name] = conv(raw, base)
            except (TypeError, ValueError) as exc:
                errors.append(f"{flag}: {exc}")
        if errors:
            raise ConfigError(errors)
        return cls(**values)


def _conv_path(raw: object, base: Path) -> Path:
    return resolve_path(os.fspath(raw), base)  # type: ignore[call-overload]


def _conv_str(raw: object, base: Path) -> str:
    return str(raw)


def _conv_strs(raw: object, base: Path) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else list(raw)  # type: ignore[call-overload]
    return tuple(str(v) for v in items)


def _conv_int(raw: object, base: Path) -> int:
    if isinstance(raw, bool):
        raise ValueError("must be an integer")
    try:
        return raw if isinstance(raw, int) else int(str(raw), 10)
    except ValueError:
        raise ValueError("must be an integer") from None


def _conv_float(raw: object, base: Path) -> float:
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None


def _const(value: object) -> Callable[[object, Path], object]:
    return lambda raw, base: value


_Conv = Callable[[object, Path], object]
# argparse dests whose Overrides field has another name, and the flags that set a constant.
_RENAMED = {d: d + "s" for d in ("acme_domain", "forward", "remote_forward", "service", "module")}
_CONSTANT: dict[str, tuple[str, object]] = {
    "no_token_auth": ("token_auth", False),
    "no_storage": ("storage", False),
    "no_socks5": ("socks5", "off"),
}


def _converter(annotation: str) -> _Conv:
    for prefix, conv in (
        ("Path", _conv_path),
        ("tuple", _conv_strs),
        ("int", _conv_int),
        ("float", _conv_float),
    ):
        if annotation.startswith(prefix):
            return conv
    return _const(True) if annotation.startswith("bool") else _conv_str


_NAMESPACE: dict[str, tuple[str, _Conv, str]] = {}
for _field in dataclasses.fields(Overrides):
    if _field.name not in ("token_auth", "storage"):
        _dest = next((d for d, n in _RENAMED.items() if n == _field.name), _field.name)
        _NAMESPACE[_dest] = (_field.name, _converter(str(_field.type)), "--" + _dest.replace("_", "-"))
for _dest, (_name, _value) in _CONSTANT.items():
    _NAMESPACE[_dest] = (_name, _const(_value), "--" + _dest.replace("_", "-"))


def _override_errors(ov: Overrides) -> list[str]:
    """Value checks on the overrides, naming the flag."""
    out: list[str] = []
    choices = (
        ("--transport", ov.transport, LISTENER_KINDS),
        ("--identity-provider", ov.identity_provider, PROVIDERS),
        ("--forwarding-default", ov.forwarding_default, _ACTIONS),
        ("--acme-challenge", ov.acme_challenge, ("http-01", "tls-alpn-01", "auto")),
    )
    for flag, value, allowed in choices:
        if value is not None and value not in allowed:
            out.append(f"{flag}: must be one of {', '.join(allowed)}")
    for flag, number, minimum in (
        ("--max-connections-per-ip", ov.max_connections_per_ip, 0),
        ("--max-auth-attempts", ov.max_auth_attempts, 0),
        ("--keepalive-count", ov.keepalive_count, 1),
    ):
        if number is not None and number < minimum:
            out.append(f"{flag}: must be an integer >= {minimum}")
    for flag, seconds, strict in (
        ("--stealth-timeout", ov.stealth_timeout, True),
        ("--login-timeout", ov.login_timeout, True),
        ("--connect-timeout", ov.connect_timeout, True),
        ("--keepalive", ov.keepalive, False),
    ):
        if seconds is not None and (
            not (seconds > 0 or (not strict and seconds == 0)) or seconds == float("inf")
        ):
            out.append(f"{flag}: must be a number {'>' if strict else '>='} 0")
    if ov.tls_cert is not None and ov.tls_key is None:
        out.append("--tls-cert needs --tls-key")
    if ov.tls_key is not None and ov.tls_cert is None:
        out.append("--tls-key needs --tls-cert")
    if ov.tls_cert is not None and ov.acme_domains:
        out.append("--tls-cert cannot be combined with --acme-domain")
    if ov.acme_domains and not ov.acme_agree_tos:
        out.append("--acme-domain needs --acme-agree-tos")
    if ov.record_calls and ov.storage is False:
        out.append("--record-calls cannot be combined with --no-storage")
    if ov.identity_provider in ("storage", "chain") and ov.storage is False:
        out.append(f"--identity-provider {ov.identity_provider} cannot be combined with --no-storage")
    if ov.proxy is not None and (msg := _problem(lambda: validate_proxy_url(str(ov.proxy)))):
        out.append(f"--proxy: {msg}")
    if ov.iroh_relay is not None and (msg := _problem(lambda: parse_relays(ov.iroh_relay or ()))):
        out.append(f"--iroh-relay: {msg}")
    if ov.node is not None and (msg := _problem(lambda: _check_node(str(ov.node)))):
        out.append(f"--node: {msg}")
    return out


def _problem(check: Callable[[], object]) -> str | None:
    """The message of the ``ValueError`` that ``check()`` raises, or ``None``."""
    try:
        check()
    except ValueError as exc:
        return str(exc)
    return None


def _check_node(name: str) -> str:
    if NODE_RE.fullmatch(name) is None or name == "head":
        raise ValueError("node name must match [a-z0-9][a-z0-9-]{0,62} and not be 'head'")
    return name


# ------------------------------------------------------------------------------------------- environment


@dataclass(frozen=True, slots=True)
class EnvValues:
    """The ``ALKNET_*`` variables of `cli.md` §13, parsed. Empty = unset; proxy variables are never read."""

    home: Path | None = None
    config: Path | None = None
    log_level: str | None = None
    debug: bool | None = None
    listen: tuple[str, ...] | None = None
    authorized_keys: Path | None = None
    cert_authority: Path | None = None
    max_connections_per_ip: int | None = None
    max_auth_attempts: int | None = None
    forwarding_default: str | None = None
    server: str | None = None
    transport: str | None = None
    peer: str | None = None
    identity: Path | None = None
    user: str | None = None
    host_key: str | None = None
    iroh_relay: tuple[str, ...] | None = None
    node: str | None = None


def parse_env(env: Mapping[str, str], *, cwd: Path | None = None) -> EnvValues:
    """Parse the variables; a malformed value raises ``ConfigError`` naming the variable."""
    base = cwd or Path.cwd()
    values: dict[str, Any] = {}
    errors: list[str] = []

    def get(var: str) -> str | None:
        value = env.get(var)
        return value if value else None

    for var in (
        "ALKNET_HOME",
        "ALKNET_CONFIG",
        "ALKNET_IDENTITY",
        "ALKNET_AUTHORIZED_KEYS",
        "ALKNET_CERT_AUTHORITY",
    ):
        if (raw := get(var)) is not None:
            values[var.removeprefix("ALKNET_").lower()] = resolve_path(raw, base)
    for var, name in (
        ("ALKNET_MAX_CONNECTIONS_PER_IP", "max_connections_per_ip"),
        ("ALKNET_MAX_AUTH_ATTEMPTS", "max_auth_attempts"),
    ):
        if (raw := get(var)) is not None:
            if raw.isascii() and raw.isdigit():
                values[name] = int(raw)
            else:
                errors.append(f"{var}: must be an integer >= 0")
    for var, name, allowed in (
        ("ALKNET_LOG_LEVEL", "log_level", ("debug", "info", "warning", "error")),
        ("ALKNET_FORWARDING_DEFAULT", "forwarding_default", _ACTIONS),
        ("ALKNET_TRANSPORT", "transport", LISTENER_KINDS),
    ):
        if (raw := get(var)) is not None:
            if raw in allowed:
                values[name] = raw
            else:
                errors.append(f"{var}: must be one of {', '.join(allowed)}")
    if (raw := get("ALKNET_DEBUG")) is not None:
        if raw.lower() in ("1", "true", "yes", "0", "false", "no"):
            values["debug"] = raw.lower() in ("1", "true", "yes")
        else:
            errors.append("ALKNET_DEBUG: must be 1 or 0")
    for var in ("ALKNET_SERVER", "ALKNET_PEER", "ALKNET_USER", "ALKNET_HOST_KEY"):
        if (raw := get(var)) is not None:
            values[var.removeprefix("ALKNET_").lower()] = raw
    if (raw := get("ALKNET_LISTEN")) is not None:
        values["listen"] = tuple(item.strip() for item in raw.split(","))
    if (raw := get("ALKNET_IROH_RELAY")) is not None:
        relays = tuple(raw.split(","))
        if (msg := _problem(lambda: parse_relays(relays))) is not None:
            errors.append(f"ALKNET_IROH_RELAY: {msg}")
        values["iroh_relay"] = relays
    if (raw := get("ALKNET_NODE")) is not None:
        if (msg := _problem(lambda: _check_node(str(raw)))) is not None:
            errors.append(f"ALKNET_NODE: {msg}")
        values["node"] = raw
    if errors:
        raise ConfigError(errors)
    return EnvValues(**values)


# ------------------------------------------------------------------------------------------------ loading


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


class ConfigSources:
    """The flags and environment captured at start, plus the ``--config`` file re-read on every ``load()``.

    ``check_server_files``: also require that the explicitly named server key, endpoint key and TLS files
    exist (``serve``); commands that do not use them pass ``False``.
    """

    def __init__(
        self,
        overrides: Overrides | None = None,
        env: Mapping[str, str] | None = None,
        *,
        check_server_files: bool = True,
        cwd: Path | None = None,
    ) -> None:
        base = cwd or Path.cwd()
        ov = overrides or Overrides()
        absolute: dict[str, Any] = {
            f.name: resolve_path(str(value), base)
            for f in dataclasses.fields(ov)
            if isinstance(value := getattr(ov, f.name), Path) and not value.is_absolute()
        }
        self.overrides = dataclasses.replace(ov, **absolute)
        self.cwd = base
        self._environ = dict(os.environ if env is None else env)
        errors = _override_errors(self.overrides)
        try:
            self.env = parse_env(self._environ, cwd=base)
        except ConfigError as exc:
            errors += exc.errors
        if errors:
            raise ConfigError(errors)
        self.check_server_files = check_server_files

    @property
    def config_path(self) -> Path | None:
        path: Path | None = _first(self.overrides.config, self.env.config)
        return path

    def _read_toml(self) -> tuple[dict[str, Any], str, Path]:
        path = self.config_path
        if path is None:
            return {}, "config", self.cwd
        label = str(path)
        try:
            with path.open("rb") as fh:
                return tomllib.load(fh), label, path.parent
        except FileNotFoundError:
            raise ConfigError(f"{label}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{label}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{label}: invalid TOML: not UTF-8") from None

    def load_static(self) -> StaticConfig:
        """Only the static part (no authorized_keys or policy files are read); raises ``ConfigError``."""
        return self._load(dynamic=False).static  # type: ignore[return-value]

    def load(self, *, check_tests: bool = True) -> LoadedConfig:
        """Read and validate everything (TOML, key files, policy and, unless ``check_tests=False``, its
        ``[[forwarding.tests]]``); raises ``ConfigError``."""
        return self._load(dynamic=True, check_tests=check_tests)

    def _load(self, *, dynamic: bool, check_tests: bool = True) -> LoadedConfig:
        doc, label, base = self._read_toml()
        errors: list[str] = []
        top = Table(doc, "", errors, label)
        tables = {name: top.table(name) for name in _TOP_KEYS if name not in ("state_dir", "listeners")}
        toml_state = top.path("state_dir", base)
        toml_listeners = top.tables("listeners")
        top.finish()
        ov, env = self.overrides, self.env
        state_dir = resolve_state_dir(ov.state_dir, self._environ, toml_state)
        if not state_dir.is_absolute():
            state_dir = self.cwd / state_dir
        static = _build_static(tables, toml_listeners, base, ov, env, state_dir, errors, label)
        static = dataclasses.replace(static, config_path=self.config_path)
        if self.check_server_files and not errors:
            errors += server_file_errors(static)
        if not dynamic:
            if errors:
                raise ConfigError(errors)
            return LoadedConfig(static, DynamicConfig())
        auth = tables["auth"] or Table({}, "auth", errors, label)
        token = auth.table("token") or Table({}, "auth.token", errors, label)
        rl = tables["rate_limits"] or Table({}, "rate_limits", errors, label)
        ak_path = _first(ov.authorized_keys, env.authorized_keys, auth.path("authorized_keys", base))
        ca_path = _first(ov.cert_authority, env.cert_authority, auth.path("cert_authorities", base))
        if ak_path is None and (static.state_dir / "authorized_keys").exists():
            ak_path = static.state_dir / "authorized_keys"  # the default; serve creates it empty
        settings: dict[str, Any] = {
            "token_enabled": _first(ov.token_auth, token.boolean("enabled"), True),
            "token_max_age": _first(token.integer("max_age", 1, 3600), 300),
            "evict_revoked": _first(auth.boolean("evict_revoked"), False),
        }
        limits = (
            _first(
                ov.max_connections_per_ip, env.max_connections_per_ip, rl.integer("max_connections_per_ip", 0)
            ),
            _first(ov.max_auth_attempts, env.max_auth_attempts, rl.integer("max_auth_attempts", 0)),
        )
        for t in (auth, token, rl):
            t.finish()
        fwd: dict[str, Any] = dict(tables["forwarding"].data) if tables["forwarding"] else {}
        if (override := _first(ov.forwarding_default, env.forwarding_default)) is not None:
            if fwd.get("default", "allow") not in _ACTIONS:
                errors.append(f"{label}: forwarding.default: must be one of allow, deny")
            fwd["default"] = override
        try:
            loaded = build_dynamic(
                ak_path,
                ca_path,
                forwarding=fwd,
                rate_limits=RateLimits(_first(limits[0], 0), _first(limits[1], 10)),
                proxy=static.proxy,
                label=label if self.config_path else None,
                check_tests=check_tests,
                **settings,
            )
        except ConfigError as exc:
            raise ConfigError(errors + exc.errors) from None
        if errors:
            raise ConfigError(errors)
        return dataclasses.replace(loaded, static=static)


# ------------------------------------------------------------------------------------------ static merge


def _build_static(
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
    key = _first(ov.key, srv.path("key", base))
    endpoint_key = _first(ov.endpoint_key, srv.path("endpoint_key", base))
    proxy = srv.string("proxy", empty_none=True)
    if proxy is not None and (msg := _problem(lambda: validate_proxy_url(str(proxy)))):
        srv.error("proxy", msg)
    timeouts = {n: srv.number(n) for n in ("login_timeout", "connect_timeout", "stealth_timeout")}
    keepalive = srv.number("keepalive_interval", positive=False)
    keepalive_count = srv.integer("keepalive_count", 1)
    max_frame = srv.integer("max_frame", *MAX_FRAME_RANGE)
    srv.finish()
    stealth_timeout = _first(ov.stealth_timeout, timeouts["stealth_timeout"], 10.0)
    listeners = _merge_listeners(toml_listeners, base, ov, env, stealth_timeout, errors, label)

    auth = table("auth")
    provider = _first(ov.identity_provider, auth.string("provider", choices=PROVIDERS), "config")
    sto = table("storage")
    storage = StorageConfig(
        enabled=False if ov.storage is False else _first(sto.boolean("enabled"), True),
        busy_timeout_ms=_first(sto.integer("busy_timeout_ms", 0), 5000),
        readers=_first(sto.integer("readers", 1), 4),
    )
    fg = table("flowgraph")
    record = _first(ov.record_calls, fg.boolean("record_calls"), False)
    flowgraph = FlowgraphConfig(enabled=_first(fg.boolean("enabled"), False) or record, record_calls=record)
    off = "--no-storage" if ov.storage is False else "storage.enabled = false"
    if record and not storage.enabled and not (ov.record_calls and ov.storage is False):
        errors.append(f"{label}: flowgraph.record_calls: needs storage ({off})")
    if provider != "config" and not storage.enabled and not (ov.identity_provider and ov.storage is False):
        errors.append(f"{label}: auth.provider: {provider} needs storage ({off})")
    sec = table("secret")
    secret = SecretConfig(
        enabled=_first(sec.boolean("enabled"), False),
        unlock_at_start=_first(sec.boolean("unlock_at_start"), False),
        allow_remote_unlock=_first(sec.boolean("allow_remote_unlock"), False),
        key_version=_first(sec.integer("key_version", 1), 2),
    )
    client = _build_client(table("client"), base, ov, env)
    wk = table("worker")
    node = wk.string("node", empty_none=True)
    if node is not None and (msg := _problem(lambda: _check_node(str(node)))):
        wk.error("node", msg)
    services = wk.strings("services")
    if services is not None and (bad := [s for s in services if s not in WORKER_SERVICES]):
        wk.error("services", f"unknown service {bad[0]!r} ({', '.join(WORKER_SERVICES)})")
    worker = WorkerConfig(
        node=_first(ov.node, env.node, node),
        services=_first(ov.services, services, ()),
        modules=_first(ov.modules, wk.strings("modules"), ()),
    )
    for name in ("storage", "flowgraph", "secret", "worker"):
        table(name).finish()
    return StaticConfig(
        state_dir=state_dir,
        listeners=listeners,
        host_key=key,
        endpoint_key=endpoint_key,
        proxy=_first(ov.proxy, proxy),
        login_timeout=_first(ov.login_timeout, timeouts["login_timeout"], 30.0),
        connect_timeout=_first(ov.connect_timeout, timeouts["connect_timeout"], 10.0),
        keepalive_interval=_first(ov.keepalive, keepalive, 15.0),
        keepalive_count=_first(ov.keepalive_count, keepalive_count, 3),
        stealth_timeout=stealth_timeout,
        max_frame=_first(max_frame, DEFAULT_MAX_FRAME),
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
        server=_first(ov.server, env.server, s["server"]),
        transport=_first(ov.transport, env.transport, transport, "tcp"),
        peer=_first(ov.peer, env.peer, s["peer"]),
        identity=_first(ov.identity, env.identity, identity),
        user=_first(ov.user, env.user, s["user"], "alknet"),
        host_key=_first(ov.host_key, env.host_key, s["host_key"]),
        socks5=_first(ov.socks5, s["socks5"], "127.0.0.1:1080"),
        forwards=_first(ov.forwards, forwards, ()),
        remote_forwards=_first(ov.remote_forwards, remote, ()),
        tls_server_name=_first(ov.tls_server_name, s["tls_server_name"]),
        tls_pin=_first(ov.tls_pin, s["tls_pin"]),
        proxy=_first(ov.proxy, s["proxy"]),
        iroh_relay=parse_relays(_first(ov.iroh_relay, env.iroh_relay, ())),
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
    relays = _first(ov.iroh_relay, env.iroh_relay)
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
