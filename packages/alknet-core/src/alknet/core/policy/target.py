"""The rule target grammar (auth-and-config.md §7.2): ``Target``, ``parse_target`` and ``parse_ports``.

Pure: parsing and canonical rendering of one rule (or ``permitopen``) target. Re-exported by
``alknet.core.policy.grammar``.

Light module: standard library plus ``alknet.core.policy.canon``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TypeAlias

from alknet.core.policy.canon import (
    RESERVED_PREFIX,
    Invalid,
    IPAddress,
    canonical_ip,
    canonicalise_host,
    canonicalise_unix_path,
)

__all__ = [
    "PORT_RE",
    "RESERVED_DESTINATIONS",
    "IPNetwork",
    "Target",
    "TargetKind",
    "parse_ports",
    "parse_target",
]

IPNetwork: TypeAlias = IPv4Network | IPv6Network

# Reserved destinations in use: name -> ports (0 = call protocol with JSON bodies, 1 = msgpack).
RESERVED_DESTINATIONS: dict[str, frozenset[int]] = {"alknet-control": frozenset({0, 1})}

PORT_RE = re.compile(r"0|[1-9][0-9]{0,4}")
_PREFIX_RE = re.compile(r"0|[1-9][0-9]{0,2}")
_GLOB_LABEL_RE = re.compile(r"[a-z0-9_-]*\*[a-z0-9_-]*")
_PATH_GLOB_FORBIDDEN = frozenset("?[]")
_MAX_TARGET_LENGTH = 1024


class TargetKind(StrEnum):
    ANY = "any"  # "*" [":" PORTS]: every host, address and reserved name (never unix)
    RESERVED_ANY = "reserved_any"  # "alknet-*": every reserved name and port
    RESERVED_NAME = "reserved_name"  # "alknet-control" [":" PORTS]
    HOST = "host"  # exact canonical name
    GLOB = "glob"  # canonical name pattern with exactly one "*" (one or more characters, dots included)
    ADDRESS = "address"  # one IP address (value: a /32 or /128 network)
    NETWORK = "network"  # CIDR (strict)
    UNIX = "unix"  # "unix:" absolute path glob ("*" = any characters except "/")


def _render_ports(ports: tuple[int, int] | None) -> str:
    if ports is None:
        return "*"
    lo, hi = ports
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass(frozen=True, slots=True)
class Target:
    """One parsed rule target. ``ports`` is an inclusive range; ``None`` means all ports."""

    kind: TargetKind
    value: str | IPv4Network | IPv6Network | None
    ports: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        """The canonical spelling; ``parse_target(t.text) == t``."""
        ports = "" if self.ports is None else ":" + _render_ports(self.ports)
        if self.kind is TargetKind.ANY:
            return "*" + ports
        if self.kind is TargetKind.RESERVED_ANY:
            return RESERVED_PREFIX + "*"
        if self.kind is TargetKind.UNIX:
            return f"unix:{self.value}"
        if isinstance(self.value, IPv4Network | IPv6Network):
            net = self.value
            body = str(net.network_address) if self.kind is TargetKind.ADDRESS else str(net)
            if net.version == 6 and ports:
                return f"[{body}]{ports}"
            return body + ports
        return f"{self.value}{ports}"

    def __str__(self) -> str:
        return self.text

    def port_matches(self, port: int | None) -> bool:
        if self.ports is None:
            return True
        return port is not None and self.ports[0] <= port <= self.ports[1]


def parse_ports(text: str) -> tuple[int, int] | None:
    """``*`` -> ``None``; ``N`` -> ``(N, N)``; ``A-B`` -> ``(A, B)``. Decimal 0..65535, no leading zeros, A
    <= B.
    """
    if text == "*":
        return None
    lo_text, sep, hi_text = text.partition("-")
    bounds: list[int] = []
    for part in (lo_text, hi_text) if sep else (lo_text,):
        if not part:
            raise ValueError("empty port")
        if PORT_RE.fullmatch(part) is None:
            if part.isascii() and part.isdigit():
                raise ValueError("port has a leading zero")
            raise ValueError("port must be '*', a number or a range A-B")
        value = int(part)
        if value > 65535:
            raise ValueError("port out of range 0..65535")
        bounds.append(value)
    lo, hi = bounds[0], bounds[-1]
    if lo > hi:
        raise ValueError("port range start is greater than its end")
    return (lo, hi)


def _host_network(ip: IPAddress) -> IPNetwork:
    return ip_network(ip)


def _parse_network(text: str) -> IPNetwork:
    addr_text, _, prefix = text.partition("/")
    if _PREFIX_RE.fullmatch(prefix) is None:
        raise ValueError("CIDR prefix length must be a decimal number without leading zeros")
    if "%" in addr_text:
        raise ValueError("scope ids are not allowed")
    try:
        net = ip_network(f"{addr_text}/{prefix}", strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError("CIDR has host bits set") from None
        raise ValueError("invalid CIDR") from None
    if isinstance(net, IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def _parse_address(text: str, *, listen: bool) -> IPAddress | None:
    """An IP literal (``None`` if ``text`` is not one); ``ValueError`` for literals the grammar refuses."""
    try:
        ip = ip_address(text)
    except ValueError:
        return None
    if listen:
        if isinstance(ip, IPv6Address) and ip.scope_id is not None:
            raise ValueError("scope ids are not allowed")
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip
    checked = canonical_ip(ip)
    if isinstance(checked, Invalid):
        raise ValueError(f"invalid host: {checked.reason}")
    return checked


def _parse_glob(host: str) -> str:
    if host.count("*") > 1:
        raise ValueError("a host pattern may contain only one '*'")
    lowered = host.lower()
    if lowered.endswith("."):
        lowered = lowered[:-1]
    labels = lowered.split(".")
    star_index = next(i for i, label in enumerate(labels) if "*" in label)
    star_label = labels[star_index]
    if _GLOB_LABEL_RE.fullmatch(star_label) is None:
        raise ValueError("the label holding '*' may contain only a-z, 0-9, '_' and '-'")
    if star_label == "*" and len(labels) == 1:
        return "*"
    probe = ".".join([*labels[:star_index], star_label.replace("*", "a"), *labels[star_index + 1 :]])
    result = canonicalise_host(probe)
    if isinstance(result, Invalid):
        raise ValueError(f"invalid host pattern: {result.reason}")
    if result.kind != "name":
        raise ValueError("a host pattern must be a name pattern")
    canon_labels = str(result.value).split(".")
    canon_labels[star_index] = star_label
    return ".".join(canon_labels)


def _parse_host(host: str, ports: tuple[int, int] | None, *, listen: bool) -> Target:
    if host == "*":
        return Target(TargetKind.ANY, None, ports)
    if not host:
        raise ValueError("empty host")
    if "/" in host:
        return Target(TargetKind.NETWORK, _parse_network(host), ports)
    ip = _parse_address(host, listen=listen)
    if ip is not None:
        return Target(TargetKind.ADDRESS, _host_network(ip), ports)
    if host[: len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX:
        if not host.startswith(RESERVED_PREFIX):
            raise ValueError("reserved prefix must be written exactly 'alknet-'")
        if host == RESERVED_PREFIX + "*":
            if ports is not None:
                raise ValueError("'alknet-*' takes no port")
            return Target(TargetKind.RESERVED_ANY, None, None)
        if "*" in host:
            raise ValueError("the only 'alknet-' pattern is 'alknet-*'")
        if host not in RESERVED_DESTINATIONS:
            raise ValueError("unknown reserved name (known: alknet-control)")
        return Target(TargetKind.RESERVED_NAME, host, ports)
    if "*" in host:
        pattern = _parse_glob(host)
        if pattern == "*":
            return Target(TargetKind.ANY, None, ports)
        return Target(TargetKind.GLOB, pattern, ports)
    result = canonicalise_host(host)
    if isinstance(result, Invalid):
        raise ValueError(f"invalid host: {result.reason}")
    if result.kind == "ip":
        assert isinstance(result.value, IPv4Address | IPv6Address)
        return Target(TargetKind.ADDRESS, _host_network(result.value), ports)
    if result.kind == "reserved":  # pragma: no cover - handled by the prefix test above
        raise ValueError("reserved prefix must be written exactly 'alknet-'")
    return Target(TargetKind.HOST, str(result.value), ports)


def _parse_unix(path: str) -> Target:
    if not path.startswith("/"):
        raise ValueError("unix: path must be absolute")
    if any(ch in _PATH_GLOB_FORBIDDEN for ch in path):
        raise ValueError("unix: paths allow only '*' as a glob character")
    result = canonicalise_unix_path(path)
    if isinstance(result, Invalid):
        raise ValueError(f"invalid unix: path: {result.reason}")
    return Target(TargetKind.UNIX, str(result.value), None)


def _check_listen(target: Target) -> Target:
    if target.kind in (TargetKind.ANY, TargetKind.ADDRESS, TargetKind.NETWORK):
        return target
    if target.kind is TargetKind.HOST and target.value == "localhost":
        return target
    raise ValueError("listen rule hosts are limited to '*', IP addresses, CIDRs and 'localhost'")


def parse_target(text: str, *, listen: bool = False) -> Target:
    """Parse one rule (or ``permitopen``) target per §7.2; ``listen=True`` applies the §7.7 host limits (and
    allows ``0.0.0.0``/``::``). Raises ``ValueError`` with a message that does not repeat the target."""
    if not isinstance(text, str):
        raise ValueError("target must be a string")
    if not text:
        raise ValueError("empty target")
    if len(text) > _MAX_TARGET_LENGTH:
        raise ValueError("target too long")
    if text.startswith("unix:"):
        if listen:
            raise ValueError("unix: targets are not allowed in listen rules")
        return _parse_unix(text[len("unix:") :])
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']'")
        inner, rest = text[1:close], text[close + 1 :]
        if not rest:
            raise ValueError(
                "a bracketed IPv6 target needs a port ('[V6]:PORTS'); write it bare for all ports"
            )
        if not rest.startswith(":"):
            raise ValueError("expected ':' after ']'")
        ports = parse_ports(rest[1:])
        if ":" not in inner:
            raise ValueError("brackets are only allowed around an IPv6 address or network")
        target = _parse_host(inner, ports, listen=listen)
        if target.kind not in (TargetKind.ADDRESS, TargetKind.NETWORK):
            raise ValueError("brackets are only allowed around an IPv6 address or network")
    elif text.count(":") > 1:
        target = _parse_host(text, None, listen=listen)
        if target.kind not in (TargetKind.ADDRESS, TargetKind.NETWORK):
            raise ValueError("invalid IPv6 address (a port on IPv6 needs brackets: '[V6]:PORTS')")
    else:
        host, sep, port_text = text.partition(":")
        ports = parse_ports(port_text) if sep else None
        target = _parse_host(host, ports, listen=listen)
    return _check_listen(target) if listen else target
