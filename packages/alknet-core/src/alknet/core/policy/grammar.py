"""Forwarding-policy value types and the rule target grammar (auth-and-config.md §7.1, §7.2).

Everything here is pure: parsing, canonical rendering and matching of one target against one canonical
request. The evaluation order (rules, principals, transports, defaults, DNS) lives in
``alknet.core.policy.forwarding``.

Light module: standard library plus ``alknet.core.auth.identity``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import ClassVar, Literal, TypeAlias

from alknet.core.auth.identity import validate_scope
from alknet.core.policy.canon import (
    BIND_ALL,
    BIND_LOCALHOST,
    RESERVED_PREFIX,
    BindHost,
    Canonical,
    Invalid,
    IPAddress,
    canonical_bind_host,
    canonical_ip,
    canonicalise_host,
    canonicalise_unix_path,
)

__all__ = [
    "BIND_ALL",
    "BIND_LOCALHOST",
    "NEEDS_ADDRESS",
    "REASON_BUILTIN_LISTEN",
    "REASON_DEFAULT",
    "REASON_INVALID_ADDRESS",
    "REASON_INVALID_TARGET",
    "REASON_KEY_OPTION",
    "REASON_NEEDS_ADDRESS",
    "REASON_NO_ADDRESS",
    "REASON_NO_UNIX_RULE",
    "REASON_PERMITOPEN",
    "REASON_RULE",
    "REASON_UNKNOWN_RESERVED",
    "REFUSED",
    "RESERVED_DESTINATIONS",
    "TRANSPORTS",
    "Action",
    "BindHost",
    "Decision",
    "DecisionAction",
    "IPNetwork",
    "Match",
    "PolicyTest",
    "Request",
    "Rule",
    "Target",
    "TargetKind",
    "bind_from_text",
    "canonical_bind_host",
    "is_known_reserved",
    "match_bind_target",
    "match_target",
    "parse_ports",
    "parse_target",
    "request_from_text",
]

IPNetwork: TypeAlias = IPv4Network | IPv6Network

TRANSPORTS: frozenset[str] = frozenset({"tcp", "tls", "quic", "iroh"})
# Reserved destinations in use: name -> ports (0 = call protocol with JSON bodies, 1 = msgpack).
RESERVED_DESTINATIONS: dict[str, frozenset[int]] = {"alknet-control": frozenset({0, 1})}

REFUSED: Literal["refused"] = "refused"
NEEDS_ADDRESS: Literal["needs-address"] = "needs-address"

# Decision reasons: fixed words, never containing the destination.
REASON_RULE = "rule"
REASON_DEFAULT = "default"
REASON_BUILTIN_LISTEN = "builtin_listen"
REASON_NO_UNIX_RULE = "no_unix_rule"
REASON_INVALID_TARGET = "invalid_target"
REASON_KEY_OPTION = "port_forwarding_not_permitted"
REASON_PERMITOPEN = "permitopen"
REASON_UNKNOWN_RESERVED = "unknown_reserved"
REASON_NEEDS_ADDRESS = "needs_address"
REASON_NO_ADDRESS = "no_address"
REASON_INVALID_ADDRESS = "invalid_address"

_PORT_RE = re.compile(r"0|[1-9][0-9]{0,4}")
_PREFIX_RE = re.compile(r"0|[1-9][0-9]{0,2}")
_GLOB_LABEL_RE = re.compile(r"[a-z0-9_-]*\*[a-z0-9_-]*")
_PATH_GLOB_FORBIDDEN = frozenset("?[]")
_MAX_TARGET_LENGTH = 1024


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


DecisionAction: TypeAlias = Action | Literal["refused", "needs-address"]


class TargetKind(StrEnum):
    ANY = "any"  # "*" [":" PORTS]: every host, address and reserved name (never unix)
    RESERVED_ANY = "reserved_any"  # "alknet-*": every reserved name and port
    RESERVED_NAME = "reserved_name"  # "alknet-control" [":" PORTS]
    HOST = "host"  # exact canonical name
    GLOB = "glob"  # canonical name pattern with exactly one "*" (one or more characters, dots included)
    ADDRESS = "address"  # one IP address (value: a /32 or /128 network)
    NETWORK = "network"  # CIDR (strict)
    UNIX = "unix"  # "unix:" absolute path glob ("*" = any characters except "/")


class Match(Enum):
    """Result of matching one target: ``NEED`` = it is an address rule and the request is a host name that has
    not been resolved yet."""

    NO = 0
    YES = 1
    NEED = 2


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


def _frozen_strings(values: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise ValueError(f"{what} must be a collection of strings, not a string")
    items = frozenset(values)
    if not items:
        raise ValueError(f"{what} must not be empty")
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{what} entries must be non-empty strings")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[forwarding.rules]]`` or ``[[forwarding.listen]]`` entry. ``principals``/``transports`` ``None``
    mean everyone / every transport; a ``"*"`` principal also means everyone."""

    target: Target
    action: Action
    principals: frozenset[str] | None = None
    transports: frozenset[str] | None = None
    text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "principals", _frozen_strings(self.principals, "principals"))
        transports = _frozen_strings(self.transports, "transports")
        if transports is not None and not transports <= TRANSPORTS:
            raise ValueError("transports must be among tcp, tls, quic, iroh")
        object.__setattr__(self, "transports", transports)
        if not self.text:
            object.__setattr__(self, "text", self.target.text)

    @classmethod
    def of(
        cls,
        target: str,
        action: Action | str,
        *,
        principals: Iterable[str] | None = None,
        transports: Iterable[str] | None = None,
        listen: bool = False,
    ) -> Rule:
        """Build a rule from target text (raises ``ValueError`` like ``parse_target``)."""
        if isinstance(principals, str) or isinstance(transports, str):
            raise ValueError("principals and transports must be collections of strings, not strings")
        return cls(
            parse_target(target, listen=listen),
            Action(action),
            None if principals is None else frozenset(principals),
            None if transports is None else frozenset(transports),
            target,
        )

    def applies_to(self, identity_id: str, scopes: Iterable[str], transport: str) -> bool:
        """Principal and transport filters (the target is matched separately)."""
        if self.transports is not None and transport not in self.transports:
            return False
        if self.principals is None or "*" in self.principals:
            return True
        if identity_id in self.principals:
            return True
        return any(scope in self.principals for scope in scopes)


@dataclass(frozen=True, slots=True)
class Request:
    """One channel open as received: ``direct-tcpip`` host and port, or ``unix:<path>`` with ``port=None``."""

    host: str
    port: int | None

    @property
    def is_unix(self) -> bool:
        return self.port is None and self.host.startswith("unix:")

    def canonical(self) -> Canonical | Invalid:
        """Step 2 of §7.3: the canonical destination (``ip``/``name``/``reserved``/``unix``) or
        ``Invalid``."""
        if not isinstance(self.host, str):
            return Invalid("host must be a string")
        if self.port is None:
            if not self.host.startswith("unix:"):
                return Invalid("missing port")
            return canonicalise_unix_path(self.host[len("unix:") :])
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            return Invalid("port out of range")
        return canonicalise_host(self.host)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check. ``rule`` is 1-based (``None`` = default or no rule); ``reason`` is one of the
    ``REASON_*`` words and never contains the destination. ``addresses`` are the only addresses the server may
    connect to when DNS was done during the check (or the literal address of an IP request), in resolver
    order; empty for names that were not resolved, reserved names and unix paths."""

    action: DecisionAction
    rule: int | None
    reason: str
    addresses: tuple[IPAddress, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.action == Action.ALLOW


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTest:
    """One ``[[forwarding.tests]]`` entry (auth-and-config.md §6.3). ``rule`` 0 means "decided by the
    default".
    """

    target: str
    expect: Literal["allow", "deny", "refused"]
    identity: str | None = None
    scopes: tuple[str, ...] = ()
    transport: str = "tcp"
    address: tuple[IPAddress, ...] | None = None
    bind: bool = False
    rule: int | None = None

    def __post_init__(self) -> None:
        if self.expect not in ("allow", "deny", "refused"):
            raise ValueError('expect must be "allow", "deny" or "refused"')
        if self.transport not in TRANSPORTS:
            raise ValueError("transport must be one of tcp, tls, quic, iroh")
        if self.identity is not None and (not isinstance(self.identity, str) or not self.identity):
            raise ValueError("identity must be a non-empty string")
        if isinstance(self.scopes, str):
            raise ValueError("scopes must be a list of strings")
        object.__setattr__(self, "scopes", tuple(validate_scope(s) for s in self.scopes))
        if self.address is not None:
            object.__setattr__(self, "address", tuple(self.address))
        if self.rule is not None and (isinstance(self.rule, bool) or self.rule < 0):
            raise ValueError("rule must be an integer >= 0")
        if self.bind:
            bind_from_text(self.target)
        else:
            request_from_text(self.target)

    __test__: ClassVar[bool] = False


# --- parsing ------------------------------------------------------------------------------------------------


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
        if _PORT_RE.fullmatch(part) is None:
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


def request_from_text(text: str) -> Request:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (as typed on the command line or in a policy test) ->
    ``Request``; ``ValueError`` if the shape is wrong (the host itself is canonicalised later, by the check).
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty target")
    if text.startswith("unix:"):
        return Request(text, None)
    host, port = _split_host_port(text)
    return Request(host, port)


def bind_from_text(text: str) -> tuple[str, int]:
    """A bind address ``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` / ``*:PORT`` -> ``(host, port)``."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty bind address")
    return _split_host_port(text)


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected '[V6]:PORT'")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 address with a port needs brackets: '[V6]:PORT'")
    if _PORT_RE.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError("port must be a number 0..65535 without leading zeros")
    return host, int(port_text)


# --- matching -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str, star: str) -> re.Pattern[str]:
    return re.compile(star.join(re.escape(part) for part in pattern.split("*")))


def _ip_in(ip: IPAddress, net: IPNetwork) -> bool:
    return ip.version == net.version and ip in net


def match_target(
    target: Target,
    canon: Canonical,
    port: int | None,
    address: IPAddress | None = None,
    *,
    proxy: bool = False,
) -> Match:
    """Does ``target`` match the canonical channel destination? For a host name and an ADDRESS/NETWORK target
    the answer is decided by ``address`` (the resolved address being evaluated); without one it is
    ``NEED``, or ``NO`` in outbound-proxy mode (names go to the proxy unresolved)."""
    kind = target.kind
    if canon.kind == "unix":
        if kind is not TargetKind.UNIX:
            return Match.NO
        assert isinstance(target.value, str)
        matched = _glob_regex(target.value, "[^/]*").fullmatch(str(canon.value)) is not None
        return Match.YES if matched else Match.NO
    if kind is TargetKind.UNIX or not target.port_matches(port):
        return Match.NO
    if kind is TargetKind.ANY:
        return Match.YES
    if canon.kind == "reserved":
        if kind is TargetKind.RESERVED_ANY:
            return Match.YES
        return Match.YES if kind is TargetKind.RESERVED_NAME and target.value == canon.value else Match.NO
    if kind is TargetKind.ADDRESS or kind is TargetKind.NETWORK:
        assert isinstance(target.value, IPv4Network | IPv6Network)
        if canon.kind == "ip":
            assert isinstance(canon.value, IPv4Address | IPv6Address)
            return Match.YES if _ip_in(canon.value, target.value) else Match.NO
        if address is not None:
            return Match.YES if _ip_in(address, target.value) else Match.NO
        return Match.NO if proxy else Match.NEED
    if canon.kind != "name":
        return Match.NO
    if kind is TargetKind.HOST:
        return Match.YES if target.value == canon.value else Match.NO
    if kind is TargetKind.GLOB:
        assert isinstance(target.value, str)
        matched = _glob_regex(target.value, ".+").fullmatch(str(canon.value)) is not None
        return Match.YES if matched else Match.NO
    return Match.NO


def is_known_reserved(name: str, port: int | None) -> bool:
    """Step 5 of §7.3: is ``name:port`` a reserved destination in use (``alknet-control`` port 0 or 1)?"""
    ports = RESERVED_DESTINATIONS.get(name)
    return ports is not None and port in ports


# --- binds --------------------------------------------------------------------------------------------------

_LOOPBACKS: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


def match_bind_target(target: Target, host: BindHost, port: int) -> bool:
    """§7.7 matching of one listen target against a canonical bind host and port (0 = server-chosen port)."""
    if not target.port_matches(port):
        return False
    if target.kind is TargetKind.ANY:
        return True
    if target.kind is TargetKind.HOST:
        return target.value == "localhost" and (host == BIND_LOCALHOST or host in _LOOPBACKS)
    if target.kind not in (TargetKind.ADDRESS, TargetKind.NETWORK):
        return False
    assert isinstance(target.value, IPv4Network | IPv6Network)
    net = target.value
    if host == BIND_ALL:
        return target.kind is TargetKind.ADDRESS and net.network_address.is_unspecified
    if host == BIND_LOCALHOST:
        return any(_ip_in(ip, net) for ip in _LOOPBACKS)
    assert isinstance(host, IPv4Address | IPv6Address)
    return _ip_in(host, net)
