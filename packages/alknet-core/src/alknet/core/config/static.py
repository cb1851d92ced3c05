"""``StaticConfig``: the part of the configuration that needs a restart to change (`auth-and-config.md` §6.1).

Also the building blocks the TOML loader (``sources``) shares: the strict table reader ``Table`` that names
every problem by its dotted key, ``--listen`` address parsing, listener validation and uniqueness, and
``static_diff`` (the dotted keys a reload would need a restart for).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ACME_CHALLENGES",
    "DEFAULT_ACME_DIRECTORY",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PORTS",
    "LISTENER_KINDS",
    "PROVIDERS",
    "ClientConfig",
    "FlowgraphConfig",
    "ListenerSpec",
    "SecretConfig",
    "StaticConfig",
    "StorageConfig",
    "Table",
    "WorkerConfig",
    "default_listener",
    "listener_errors",
    "listener_from_table",
    "parse_listen",
    "parse_relays",
    "resolve_path",
    "server_file_errors",
    "static_diff",
    "unique_errors",
    "validate_proxy_url",
]

LISTENER_KINDS = ("tcp", "tls", "quic", "iroh")
DEFAULT_PORTS = {"tcp": 2222, "tls": 2443, "quic": 2443, "iroh": 0}
_SCHEMES = {"tcp": ("tcp", "ssh"), "tls": ("tls", "ssh"), "quic": ("quic", "ssh"), "iroh": ("iroh", "ssh")}
_SCHEMES["raw+tcp"] = ("tcp", "raw")
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
ACME_CHALLENGES = ("http-01", "tls-alpn-01", "auto")
PROVIDERS = ("config", "storage", "chain")
DEFAULT_MAX_FRAME = 16 * 2**20
MAX_FRAME_RANGE = (1024, 64 * 2**20)
WORKER_SERVICES = ("storage", "secrets", "flowgraph")
NODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?"
)
_PORT_RE = re.compile(r"0|[1-9][0-9]{0,4}")


# --------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listener: a ``--listen`` value or a ``[[listeners]]`` table; fields mirror ``ListenerOptions``."""

    kind: str = "tcp"  # tcp | tls | quic | iroh
    host: str = "127.0.0.1"  # without IPv6 brackets
    port: int = 2222  # 0 = a free port
    interface: str = "ssh"  # ssh | raw (raw: tcp only)
    stealth: bool = False
    stealth_timeout: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    acme_domains: tuple[str, ...] = ()
    acme_email: str | None = None
    acme_agree_tos: bool = False
    acme_challenge: str = "auto"
    acme_directory: str = DEFAULT_ACME_DIRECTORY
    acme_ca_bundle: Path | None = None
    acme_http_listen: str = "0.0.0.0:80"
    iroh_relays: tuple[str, ...] = ()  # () = default relays; ("disabled",) = off; else relay URLs
    insecure_plaintext: bool = False

    @property
    def protocol(self) -> str:
        """The socket protocol it binds (two listeners may share an address on different protocols)."""
        return "udp" if self.kind in ("quic", "iroh") else "tcp"

    @property
    def scheme(self) -> str:
        return "raw+tcp" if self.interface == "raw" else self.kind

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.hostport}"

    @property
    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class StorageConfig:
    enabled: bool = True
    busy_timeout_ms: int = 5000
    readers: int = 4


@dataclass(frozen=True, slots=True)
class FlowgraphConfig:
    enabled: bool = False
    record_calls: bool = False


@dataclass(frozen=True, slots=True)
class SecretConfig:
    enabled: bool = False
    unlock_at_start: bool = False
    allow_remote_unlock: bool = False
    key_version: int = 2


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The ``[client]`` table merged with the client flags and ``ALKNET_*`` variables (``None`` = not set)."""

    server: str | None = None
    transport: str = "tcp"
    peer: str | None = None
    identity: Path | None = None
    user: str = "alknet"
    host_key: str | None = None
    socks5: str = "127.0.0.1:1080"  # "off" = no SOCKS5 listener
    forwards: tuple[str, ...] = ()
    remote_forwards: tuple[str, ...] = ()
    tls_server_name: str | None = None
    tls_pin: str | None = None
    proxy: str | None = None
    iroh_relay: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    node: str | None = None
    services: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StaticConfig:
    """Everything that needs a restart to change. Paths are absolute."""

    state_dir: Path
    listeners: tuple[ListenerSpec, ...] = (ListenerSpec(),)
    host_key: Path | None = None  # None = <state>/host_key (created if missing)
    endpoint_key: Path | None = None  # None = the host key
    proxy: str | None = None  # data-plane proxy
    login_timeout: float = 30.0
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count: int = 3
    stealth_timeout: float = 10.0
    max_frame: int = DEFAULT_MAX_FRAME
    auth_provider: str = "config"
    storage: StorageConfig = field(default_factory=StorageConfig)
    flowgraph: FlowgraphConfig = field(default_factory=FlowgraphConfig)
    secret: SecretConfig = field(default_factory=SecretConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    config_path: Path | None = None

    @property
    def host_key_path(self) -> Path:
        return self.host_key if self.host_key is not None else self.state_dir / "host_key"

    @property
    def endpoint_key_path(self) -> Path:
        return self.endpoint_key if self.endpoint_key is not None else self.host_key_path


# Dotted TOML keys of the StaticConfig fields a running server uses (client/worker tables are not compared).
_DIFF_KEYS = {
    "state_dir": "state_dir",
    "listeners": "listeners",
    "host_key": "server.key",
    "endpoint_key": "server.endpoint_key",
    "proxy": "server.proxy",
    "login_timeout": "server.login_timeout",
    "connect_timeout": "server.connect_timeout",
    "keepalive_interval": "server.keepalive_interval",
    "keepalive_count": "server.keepalive_count",
    "stealth_timeout": "server.stealth_timeout",
    "max_frame": "server.max_frame",
    "auth_provider": "auth.provider",
}


def static_diff(old: StaticConfig, new: StaticConfig) -> list[str]:
    """Dotted keys whose value differs between the running and the re-read static config."""
    out = [key for name, key in _DIFF_KEYS.items() if getattr(old, name) != getattr(new, name)]
    for table in ("storage", "flowgraph", "secret"):
        a, b = getattr(old, table), getattr(new, table)
        out.extend(f"{table}.{f.name}" for f in fields(a) if getattr(a, f.name) != getattr(b, f.name))
    return out


# --------------------------------------------------------------------------------------------- table reader


def resolve_path(value: str, base: Path) -> Path:
    """``~`` expanded; a relative path is taken relative to ``base`` (the TOML file's directory or cwd)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


class Table:
    """Strict reader over one TOML table.

    Every accessor marks its key as known; ``finish()`` reports the rest as unknown keys. Problems are
    appended to the shared ``errors`` list as ``"<label>: <dotted.key>: <message>"``; the accessor then
    returns ``None`` (the caller falls back to the next source or the default).
    """

    def __init__(self, data: Mapping[str, object], key: str, errors: list[str], label: str) -> None:
        self.data = data
        self.key = key
        self.errors = errors
        self.label = label
        self._seen: set[str] = set()

    def dotted(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str) -> None:
        self.errors.append(f"{self.label}: {self.dotted(name)}: {message}")

    def raw(self, name: str) -> object:
        self._seen.add(name)
        return self.data.get(name)

    def finish(self) -> None:
        for name in self.data:
            if name not in self._seen:
                self.errors.append(f"{self.label}: unknown key '{self.dotted(name)}'")

    def _typed(self, name: str, kinds: tuple[type, ...], what: str) -> object:
        value = self.raw(name)
        if value is None:
            return None
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.error(name, f"must be {what}")
            return None
        return value

    def string(
        self, name: str, *, choices: Sequence[str] | None = None, empty_none: bool = False
    ) -> str | None:
        value = self._typed(name, (str,), "a string")
        if not isinstance(value, str):
            return None
        if empty_none and value == "":
            return None
        if choices is not None and value not in choices:
            self.error(name, f"must be one of {', '.join(choices)}")
            return None
        return value

    def boolean(self, name: str) -> bool | None:
        value = self._typed(name, (bool,), "true or false")
        return value if isinstance(value, bool) else None

    def integer(self, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._typed(name, (int,), "an integer")
        if not isinstance(value, int):
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(name, f"out of range ({_range_text(lo, hi)})")
            return None
        return value

    def number(self, name: str, *, positive: bool = True) -> float | None:
        value = self._typed(name, (int, float), "a number")
        if not isinstance(value, int | float):
            return None
        if value < 0 or (positive and value == 0) or value != value or value == float("inf"):
            self.error(name, "out of range (must be > 0)" if positive else "out of range (must be >= 0)")
            return None
        return float(value)

    def strings(self, name: str) -> tuple[str, ...] | None:
        value = self._typed(name, (list,), "a list of strings")
        if not isinstance(value, list):
            return None
        if not all(isinstance(v, str) for v in value):
            self.error(name, "must be a list of strings")
            return None
        return tuple(value)

    def path(self, name: str, base: Path) -> Path | None:
        value = self.string(name, empty_none=True)
        return None if value is None else resolve_path(value, base)

    def table(self, name: str) -> Table | None:
        value = self._typed(name, (dict,), "a table")
        return Table(value, self.dotted(name), self.errors, self.label) if isinstance(value, dict) else None

    def tables(self, name: str) -> list[Table] | None:
        value = self._typed(name, (list,), "an array of tables")
        if not isinstance(value, list):
            return None
        out = []
        for i, item in enumerate(value, 1):
            if isinstance(item, dict):
                out.append(Table(item, f"{self.dotted(name)}[{i}]", self.errors, self.label))
            else:
                self.errors.append(f"{self.label}: {self.dotted(name)}[{i}]: must be a table")
        return out


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


# ------------------------------------------------------------------------------------------------ listeners


def _parse_host(text: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError("unterminated '[' in IPv6 address")
        inner = text[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError("invalid IPv6 address in brackets") from None
    if ":" in text:
        raise ValueError("IPv6 addresses need brackets, e.g. [::1]:2222")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(text):
        raise ValueError("invalid host")
    return text


def parse_listen(text: str, *, default_kind: str = "tcp") -> ListenerSpec:
    """Parse ``HOST:PORT`` or ``KIND://HOST:PORT`` (tcp, tls, quic, iroh, raw+tcp); raises ``ValueError``.

    A missing port takes the kind's default (tcp 2222, tls/quic 2443); ``raw+tcp`` needs an explicit port;
    ``iroh://`` alone binds ``0.0.0.0:0``; scheme-less values take ``default_kind``.
    """
    if default_kind not in LISTENER_KINDS:
        raise ValueError(f"unknown transport {default_kind!r} (tcp, tls, quic, iroh)")
    if not text or any(c.isspace() for c in text):
        raise ValueError("empty listen address" if not text else "listen address contains whitespace")
    kind, interface, rest = default_kind, "ssh", text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() not in _SCHEMES:
            raise ValueError(f"unknown listener kind {scheme!r} (tcp, tls, quic, iroh, raw+tcp)")
        kind, interface = _SCHEMES[scheme.lower()]
        if rest == "" and kind == "iroh":
            return ListenerSpec(kind="iroh", host="0.0.0.0", port=0)
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError("unterminated '[' in IPv6 address")
        host_text, tail = rest[: close + 1], rest[close + 1 :]
        if tail and not tail.startswith(":"):
            raise ValueError("expected ':PORT' after the IPv6 address")
        port_text = tail[1:] if tail else None
    elif rest.count(":") == 1:
        host_text, port_text = rest.split(":")
    else:
        host_text, port_text = rest, None
    if host_text == "":
        raise ValueError("listen address needs a host")
    host = _parse_host(host_text)
    if port_text is None:
        if interface == "raw":
            raise ValueError("raw+tcp listeners need an explicit port")
        port = DEFAULT_PORTS[kind]
    elif _PORT_RE.fullmatch(port_text) and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError("port must be a number 0..65535")
    return ListenerSpec(kind=kind, host=host, port=port, interface=interface)


def default_listener(kind: str = "tcp") -> ListenerSpec:
    """The listener used when none is configured: ``kind`` on 127.0.0.1 at its default port.

    An iroh endpoint binds ``0.0.0.0:0``.
    """
    if kind == "iroh":
        return ListenerSpec(kind="iroh", host="0.0.0.0", port=0)
    return ListenerSpec(kind=kind, host="127.0.0.1", port=DEFAULT_PORTS[kind])


def parse_relays(values: Iterable[str]) -> tuple[str, ...]:
    """``["default"]`` -> ``()``; ``["disabled"]`` -> ``("disabled",)``; otherwise http(s) relay URLs."""
    items = tuple(values)
    if not items or items == ("default",):
        return ()
    if items == ("disabled",):
        return ("disabled",)
    for item in items:
        if item in ("default", "disabled"):
            raise ValueError(f"{item!r} cannot be combined with other relays")
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("relay must be 'default', 'disabled' or an http(s) URL")
    return items


def validate_proxy_url(url: str) -> str:
    """A ``socks5://``, ``socks5h://`` or ``http://`` URL with host and port; raises ``ValueError``.

    The URL is never echoed (it may carry credentials).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("invalid proxy URL") from None
    if parts.scheme not in ("socks5", "socks5h", "http") or not parts.hostname:
        raise ValueError("proxy must be a socks5:// or http:// URL with a host")
    if port is None:
        raise ValueError("proxy URL needs a port")
    return url


def listener_from_table(t: Table, base: Path) -> ListenerSpec | None:
    """One ``[[listeners]]`` table (transport, interface, listen, stealth, insecure_plaintext and the
    ``tls``/``iroh`` sub-tables). Problems go to ``t``'s error list; the result is then best effort."""
    kind = t.string("transport", choices=LISTENER_KINDS) or "tcp"
    interface = t.string("interface", choices=("ssh", "raw")) or "ssh"
    listen = t.string("listen")
    spec: ListenerSpec | None = default_listener(kind)
    if listen is not None:
        text = listen if "://" in listen else f"{'raw+tcp' if interface == 'raw' else kind}://{listen}"
        try:
            spec = parse_listen(text, default_kind=kind)
        except ValueError as exc:
            t.error("listen", str(exc))
            spec = None
        if spec is not None and (spec.kind != kind or (interface == "raw" and spec.interface != "raw")):
            t.error("listen", f"scheme does not match transport = {kind!r}")
    elif interface == "raw":
        t.error("listen", "a raw listener needs an explicit listen address with a port")
    values: dict[str, Any] = {"interface": interface} if spec is not None and interface == "raw" else {}
    values["stealth"] = _or(t.boolean("stealth"), False)
    values["insecure_plaintext"] = _or(t.boolean("insecure_plaintext"), False)
    tls, iroh = t.table("tls"), t.table("iroh")
    if tls is not None:
        if kind != "tls":
            t.error("tls", "only for transport = 'tls'")
        values["tls_cert"], values["tls_key"] = tls.path("cert", base), tls.path("key", base)
        values["acme_domains"] = _or(tls.strings("acme_domains"), ())
        values["acme_email"] = tls.string("acme_email", empty_none=True)
        values["acme_agree_tos"] = _or(tls.boolean("acme_agree_tos"), False)
        values["acme_challenge"] = _or(tls.string("acme_challenge", choices=ACME_CHALLENGES), "auto")
        for name in ("acme_directory", "acme_http_listen"):
            if (value := tls.string(name)) is not None:
                values[name] = value
        values["acme_ca_bundle"] = tls.path("acme_ca_bundle", base)
        tls.finish()
    if iroh is not None:
        if kind != "iroh":
            t.error("iroh", "only for transport = 'iroh'")
        relays = iroh.strings("relay")
        try:
            values["iroh_relays"] = parse_relays(relays or ())
        except ValueError as exc:
            iroh.error("relay", str(exc))
        iroh.finish()
    t.finish()
    return None if spec is None else dataclasses.replace(spec, **values)


def listener_errors(spec: ListenerSpec, label: str) -> list[str]:
    """Per-listener consistency checks (``label`` names the source, e.g. ``config.toml: listeners[2]``)."""
    out: list[str] = []
    if spec.kind not in LISTENER_KINDS:
        out.append(f"{label}: unknown transport {spec.kind!r}")
    if spec.interface not in ("ssh", "raw"):
        out.append(f"{label}: interface must be ssh or raw")
    elif spec.interface == "raw":
        if spec.kind != "tcp":
            out.append(f"{label}: interface raw is only for tcp (quic and iroh offer raw through ALPN)")
        elif not spec.is_loopback and not spec.insecure_plaintext:
            out.append(f"{label}: raw listener on non-loopback {spec.host} needs insecure_plaintext")
    if spec.stealth and spec.kind != "tls":
        out.append(f"{label}: stealth is only for tls listeners")
    if (spec.tls_cert is None) != (spec.tls_key is None):
        out.append(f"{label}: tls cert and key must be given together")
    if spec.tls_cert is not None and spec.acme_domains:
        out.append(f"{label}: a manual certificate cannot be combined with acme_domains")
    if spec.acme_domains and not spec.acme_agree_tos:
        out.append(f"{label}: acme_domains needs acme_agree_tos (--acme-agree-tos)")
    if spec.acme_challenge not in ACME_CHALLENGES:
        out.append(f"{label}: acme_challenge must be one of {', '.join(ACME_CHALLENGES)}")
    if not spec.stealth_timeout > 0:
        out.append(f"{label}: stealth_timeout must be > 0")
    return out


def unique_errors(listeners: Sequence[ListenerSpec], label: str) -> list[str]:
    """Two listeners on the same address and protocol are an error (port 0 = a free port, never a clash)."""
    out: list[str] = []
    seen: dict[tuple[str, str, int], ListenerSpec] = {}
    for spec in listeners:
        if spec.port == 0:
            continue
        key = (spec.protocol, spec.host.lower(), spec.port)
        if key in seen:
            out.append(
                f"{label}: two listeners on the same address and protocol: {seen[key].url} and {spec.url}"
            )
        else:
            seen[key] = spec
    return out


def server_file_errors(static: StaticConfig) -> list[str]:
    """Every explicitly referenced key and certificate file must exist (the default host key is created)."""
    wanted: list[tuple[str, Path | None]] = [
        ("server key", static.host_key),
        ("endpoint key", static.endpoint_key),
    ]
    for spec in static.listeners:
        wanted += [("tls certificate", spec.tls_cert), ("tls key", spec.tls_key)]
        wanted.append(("acme CA bundle", spec.acme_ca_bundle))
    out: list[str] = []
    for what, path in wanted:
        if path is not None and not path.is_file():
            message = f"{what} {path}: no such file" if not path.exists() else f"{what} {path}: not a file"
            if message not in out:
                out.append(message)
    return out
