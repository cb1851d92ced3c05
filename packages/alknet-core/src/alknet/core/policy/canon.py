"""Canonicalisation of forwarding destinations (auth-and-config.md §7.4).

``canonicalise_host`` turns the host of a channel open (or of a rule target) into one canonical form so that
no spelling of an address or name (``127.1``, ``0x7f.0.0.1``, fullwidth digits, ``LOCALHOST.``, IPv4-mapped
IPv6, a differently cased ``alknet-`` prefix) can slip past the forwarding policy. ``canonicalise_unix_path``
does the same for ``direct-streamlocal`` paths (the server resolves symlinks afterwards; that is not done
here).

Invalid reasons are fixed texts: they never contain the input, so they are safe to log.

Light module: standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal, TypeAlias

__all__ = [
    "BIND_ALL",
    "BIND_LOCALHOST",
    "INVALID_REASONS",
    "MAX_HOST_LENGTH",
    "MAX_UNIX_PATH_BYTES",
    "RESERVED_PREFIX",
    "BindHost",
    "Canonical",
    "CanonicalKind",
    "IPAddress",
    "Invalid",
    "canonical_bind_host",
    "canonical_ip",
    "canonicalise_host",
    "canonicalise_unix_path",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
CanonicalKind: TypeAlias = Literal["reserved", "ip", "name", "unix"]

RESERVED_PREFIX = "alknet-"
MAX_HOST_LENGTH = 253
MAX_UNIX_PATH_BYTES = 107

_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")
_NUMERIC_LAST_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")
# Characters the IDNA codec treats as label separators, mapped to "." before splitting.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_FORBIDDEN = frozenset("%/\\@")
_MAX_RAW_UNIX_PATH = 4096

# Every reason ``canonicalise_host`` / ``canonicalise_unix_path`` can give (fixed texts, never the input).
INVALID_REASONS: frozenset[str] = frozenset(
    {
        "'..' segment in path",
        "IDNA encoding failed",
        "NUL in path",
        "bind host must be an IP address, 'localhost' or all interfaces",
        "brackets are only allowed around an IPv6 address",
        "control character",
        "empty host",
        "empty label",
        "empty path",
        "host must be a string",
        "forbidden character",
        "host too long",
        "invalid label",
        "name too long",
        "numeric last label (not a dotted-quad address)",
        "path is not valid UTF-8",
        "path longer than 107 bytes",
        "path must be absolute",
        "path too long",
        "reserved prefix must be written exactly 'alknet-'",
        "scope ids are not allowed",
        "unspecified address",
        "whitespace",
    }
)


@dataclass(frozen=True, slots=True)
class Canonical:
    """A valid destination: ``reserved`` (value: the exact ``alknet-`` name), ``ip`` (value: an address;
    IPv4-mapped IPv6 already reduced to IPv4), ``name`` (value: lowercase ASCII/IDNA name without trailing
    dot) or ``unix`` (value: the normalised absolute path)."""

    kind: CanonicalKind
    value: str | IPv4Address | IPv6Address

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A refused destination. ``reason`` is a fixed text that never contains the input."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def canonical_ip(ip: IPAddress) -> IPAddress | Invalid:
    """Step 3 of §7.4 for an already parsed address: IPv4-mapped IPv6 -> IPv4; unspecified and scoped ->
    invalid.
    """
    if isinstance(ip, IPv6Address):
        if ip.scope_id is not None:
            return Invalid("scope ids are not allowed")
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return Invalid("unspecified address")
    return ip


def _check_characters(s: str) -> Invalid | None:
    for ch in s:
        if ch in _FORBIDDEN:
            return Invalid("forbidden character")
        if ch.isspace():
            return Invalid("whitespace")
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co"):
            return Invalid("control character")
        if category in ("Zs", "Zl", "Zp"):
            return Invalid("whitespace")
    return None


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _canonical_name(s: str) -> Canonical | Invalid:
    lowered = s.lower().translate(_DOTS)
    if lowered.endswith("."):
        lowered = lowered[:-1]
    labels: list[str] = []
    for label in lowered.split("."):
        if not label:
            return Invalid("empty label")
        if label.isascii():
            labels.append(label)
            continue
        try:
            encoded = label.encode("idna")
        except UnicodeError:
            return Invalid("IDNA encoding failed")
        labels.append(encoded.decode("ascii").lower())
    name = ".".join(labels)
    ip = _parse_ip(name)
    if ip is not None:
        checked = canonical_ip(ip)
        return checked if isinstance(checked, Invalid) else Canonical("ip", checked)
    if _NUMERIC_LAST_LABEL_RE.fullmatch(labels[-1]):
        return Invalid("numeric last label (not a dotted-quad address)")
    for label in labels:
        if _LABEL_RE.fullmatch(label) is None:
            return Invalid("invalid label")
    if len(name) > MAX_HOST_LENGTH:
        return Invalid("name too long")
    if name.startswith(RESERVED_PREFIX):
        # Only the exact raw spelling reaches the reserved namespace; a mapped look-alike is refused.
        return Invalid("reserved prefix must be written exactly 'alknet-'")
    return Canonical("name", name)


def canonicalise_host(s: str) -> Canonical | Invalid:
    """Canonicalise a destination host per auth-and-config.md §7.4 (pure; never resolves anything)."""
    if not isinstance(s, str) or not s:
        return Invalid("empty host")
    if len(s) > MAX_HOST_LENGTH:
        return Invalid("host too long")
    bad = _check_characters(s)
    if bad is not None:
        return bad
    if s.startswith("[") or s.endswith("]"):
        inner = s[1:-1] if s.startswith("[") and s.endswith("]") else ""
        ip = _parse_ip(inner) if ":" in inner else None
        if not isinstance(ip, IPv6Address):
            return Invalid("brackets are only allowed around an IPv6 address")
        checked = canonical_ip(ip)
        return checked if isinstance(checked, Invalid) else Canonical("ip", checked)
    if s.startswith(RESERVED_PREFIX):
        return Canonical("reserved", s)
    if s[: len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX:
        return Invalid("reserved prefix must be written exactly 'alknet-'")
    ip = _parse_ip(s)
    if ip is not None:
        checked = canonical_ip(ip)
        return checked if isinstance(checked, Invalid) else Canonical("ip", checked)
    return _canonical_name(s)


def canonicalise_unix_path(path: str) -> Canonical | Invalid:
    """Normalise a ``direct-streamlocal`` path: absolute, no NUL, no ``..`` segment, ``//`` and ``/./``
    collapsed, at most 107 bytes (UTF-8). Symlinks are resolved by the server, not here."""
    if not isinstance(path, str) or not path:
        return Invalid("empty path")
    if len(path) > _MAX_RAW_UNIX_PATH:
        return Invalid("path too long")
    if "\x00" in path:
        return Invalid("NUL in path")
    if not path.startswith("/"):
        return Invalid("path must be absolute")
    segments = path.split("/")
    if ".." in segments:
        return Invalid("'..' segment in path")
    kept = [seg for seg in segments if seg not in ("", ".")]
    normal = "/" + "/".join(kept)
    try:
        size = len(normal.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return Invalid("path is not valid UTF-8")
    if size > MAX_UNIX_PATH_BYTES:
        return Invalid("path longer than 107 bytes")
    return Canonical("unix", normal)


# --- bind hosts (§7.7) --------------------------------------------------------------------------------------

BIND_ALL: Literal["all"] = "all"
BIND_LOCALHOST: Literal["localhost"] = "localhost"
BindHost: TypeAlias = IPAddress | Literal["all", "localhost"]


def canonical_bind_host(host: str) -> BindHost | Invalid:
    """``""``, ``*``, ``0.0.0.0``, ``::`` -> all interfaces; ``localhost`` -> loopback; an IP literal ->
    itself; any other name -> ``Invalid``."""
    if not isinstance(host, str):
        return Invalid("host must be a string")
    if host in ("", "*"):
        return BIND_ALL
    text = host[1:-1] if host.startswith("[") and host.endswith("]") and ":" in host else host
    if "%" not in text:
        try:
            ip: IPAddress = ip_address(text)
        except ValueError:
            pass
        else:
            if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return BIND_ALL if ip.is_unspecified else ip
    result = canonicalise_host(host)
    if isinstance(result, Invalid):
        return result
    if result.kind == "ip":
        assert isinstance(result.value, IPv4Address | IPv6Address)
        return result.value
    if result.kind == "name" and result.value == "localhost":
        return BIND_LOCALHOST
    return Invalid("bind host must be an IP address, 'localhost' or all interfaces")
