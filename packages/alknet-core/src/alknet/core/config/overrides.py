"""Command-line overrides: the ``Overrides`` captured from argparse and their value checks (`cli.md` §13)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alknet.core.config.checks import ACTIONS, check_node, problem
from alknet.core.config.static import (
    LISTENER_KINDS,
    PROVIDERS,
    parse_relays,
    resolve_path,
    validate_proxy_url,
)
from alknet.core.errors import ConfigError

__all__ = ["Overrides", "override_errors"]


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


def override_errors(ov: Overrides) -> list[str]:
    """Value checks on the overrides, naming the flag."""
    out: list[str] = []
    choices = (
        ("--transport", ov.transport, LISTENER_KINDS),
        ("--identity-provider", ov.identity_provider, PROVIDERS),
        ("--forwarding-default", ov.forwarding_default, ACTIONS),
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
    if ov.proxy is not None and (msg := problem(lambda: validate_proxy_url(str(ov.proxy)))):
        out.append(f"--proxy: {msg}")
    if ov.iroh_relay is not None and (msg := problem(lambda: parse_relays(ov.iroh_relay or ()))):
        out.append(f"--iroh-relay: {msg}")
    if ov.node is not None and (msg := problem(lambda: check_node(str(ov.node)))):
        out.append(f"--node: {msg}")
    return out
