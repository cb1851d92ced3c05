"""The ``ALKNET_*`` environment variables (`cli.md` §13): ``EnvValues`` and ``parse_env``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alknet.core.config.checks import ACTIONS, check_node, problem
from alknet.core.config.static import LISTENER_KINDS, parse_relays, resolve_path
from alknet.core.errors import ConfigError

__all__ = ["EnvValues", "parse_env"]


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
        ("ALKNET_FORWARDING_DEFAULT", "forwarding_default", ACTIONS),
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
        if (msg := problem(lambda: parse_relays(relays))) is not None:
            errors.append(f"ALKNET_IROH_RELAY: {msg}")
        values["iroh_relay"] = relays
    if (raw := get("ALKNET_NODE")) is not None:
        if (msg := problem(lambda: check_node(str(raw)))) is not None:
            errors.append(f"ALKNET_NODE: {msg}")
        values["node"] = raw
    if errors:
        raise ConfigError(errors)
    return EnvValues(**values)
