"""Matching one rule target against one canonical request (§7.3) or bind address (§7.7).

Pure. The evaluation order (rules, principals, transports, defaults, DNS) lives in
``alknet.core.policy.forwarding``. Re-exported by ``alknet.core.policy.grammar``.

Light module: standard library plus ``alknet.core.policy.canon``.
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from alknet.core.policy.canon import BIND_ALL, BIND_LOCALHOST, BindHost, Canonical, IPAddress
from alknet.core.policy.target import RESERVED_DESTINATIONS, IPNetwork, Target, TargetKind

__all__ = ["Match", "is_known_reserved", "match_bind_target", "match_target"]


class Match(Enum):
    """Result of matching one target: ``NEED`` = it is an address rule and the request is a host name that has
    not been resolved yet."""

    NO = 0
    YES = 1
    NEED = 2


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
