"""``authorized_keys`` files: OpenSSH syntax restricted to Ed25519 plus ``alknet-scopes=``.

Light module (no asyncssh). The parser never skips a bad line: every error of every line is collected as
``"<source>:<line>: <message>"`` and the whole file is refused with ``AuthorizedKeysError``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from alknet.core.auth.identity import CredentialKind, KeyOptions, validate_scope
from alknet.core.auth.keys import (
    ED25519,
    PublicKey,
    blob_key_type,
    decode_ed25519_blob,
    fingerprint,
    strict_b64decode,
    token_key_id,
    unsupported_type_message,
)
from alknet.core.errors import ConfigError, KeyFormatError

if TYPE_CHECKING:
    from alknet.core.policy.forwarding import Target

__all__ = ["DEFAULT_SCOPES", "AuthorizedKeysError", "KeyEntry", "parse_authorized_keys"]

DEFAULT_SCOPES: tuple[str, ...] = ("relay:connect",)

_WS = " \t"
_OPTION_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_SPLIT_RE = re.compile(r"[ \t]+")
# Tokens that name a key type rather than an options field (OpenSSH key and certificate type names).
_KEYTYPE_RE = re.compile(r"(?:ssh-|ecdsa-|sk-|rsa-sha2-)[A-Za-z0-9@._-]*|[A-Za-z0-9._-]+@openssh\.com")
_CERT_SUFFIX_RE = re.compile(r"-cert-v0[0-9]@openssh\.com\Z")
_VALUE_OPTIONS = frozenset({"principals", "from", "permitopen", "alknet-scopes"})
_FLAG_OPTIONS = frozenset({"cert-authority", "restrict", "no-port-forwarding"})


class AuthorizedKeysError(ConfigError):
    """An ``authorized_keys`` (or cert-authority) file with bad lines; ``errors`` lists every one."""


@dataclass(frozen=True, slots=True, repr=False)
class KeyEntry:
    """One parsed line. ``scopes`` are sorted and unique, defaulted to ``("relay:connect",)``."""

    kind: CredentialKind
    fingerprint: str
    raw_key: bytes
    scopes: tuple[str, ...]
    options: KeyOptions
    line_no: int
    comment: str

    @property
    def token_key_id(self) -> bytes:
        return token_key_id(self.raw_key)

    def __repr__(self) -> str:
        return f"KeyEntry({self.kind.value} {self.fingerprint} line={self.line_no} scopes={len(self.scopes)})"


class _LineError(Exception):
    pass


def _esc(value: str, limit: int = 64) -> str:
    """A user-supplied value made safe for a one-line ASCII message: escaped and truncated."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return value.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _show(value: str) -> str:
    return f'"{_esc(value)}"'


def _split_options(line: str) -> tuple[list[tuple[str, str | None]], int]:
    """Quote-aware scan of the options field; returns the options and the index just after the field."""
    opts: list[tuple[str, str | None]] = []
    n = len(line)
    i = 0
    while True:
        m = _OPTION_NAME_RE.match(line, i)
        if m is None:
            raise _LineError(f"malformed options at column {i + 1}")
        name = m.group().lower()
        i = m.end()
        value: str | None = None
        if i < n and line[i] == "=":
            i += 1
            if i >= n or line[i] != '"':
                raise _LineError(f"option {_show(name)}: the value must be in double quotes")
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise _LineError(f"option {_show(name)}: unterminated quote")
                c = line[i]
                if c == "\\" and i + 1 < n and line[i + 1] == '"':
                    buf.append('"')
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            value = "".join(buf)
        opts.append((name, value))
        if i >= n:
            raise _LineError("missing key after the options")
        if line[i] == ",":
            i += 1
            continue
        if line[i] in _WS:
            return opts, i
        raise _LineError(f"malformed options at column {i + 1}")


def _parse_from(value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    nets: list[IPv4Network | IPv6Network] = []
    for item in value.split(","):
        if not item:
            raise _LineError("from= has an empty entry")
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise _LineError(f"from= entry {_show(item)} is not an IP address or CIDR") from None
    return tuple(nets)


def _parse_principals(value: str) -> frozenset[str]:
    names = value.split(",")
    for name in names:
        if not name or any(c in name for c in " \t") or not name.isprintable():
            raise _LineError(f"principals= entry {_show(name)} is not a valid user name")
    return frozenset(names)


def _parse_scopes(value: str) -> tuple[str, ...]:
    if value == "":
        return ()
    scopes: set[str] = set()
    for item in value.split(","):
        try:
            scopes.add(validate_scope(item))
        except ValueError:
            raise _LineError(f"alknet-scopes= has an invalid scope {_show(item)}") from None
    return tuple(sorted(scopes))


def _parse_permitopen(value: str) -> list[Target]:
    from alknet.core.policy.forwarding import parse_target

    # Errors name the entry by position, never by value: reload errors are logged and targets never are.
    targets: list[Target] = []
    for pos, item in enumerate(value.split(","), start=1):
        if not item:
            raise _LineError(f"permitopen= entry {pos} is empty")
        try:
            targets.append(parse_target(item))
        except ValueError as exc:
            raise _LineError(f"permitopen= entry {pos}: {_esc(_one_line(str(exc)), 200)}") from None
    return targets


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text[:200] if text else "invalid target"


def _parse_line(
    line: str, implicit_ca: bool
) -> tuple[CredentialKind, bytes, tuple[str, ...], KeyOptions, str]:
    first = _SPLIT_RE.split(line, maxsplit=1)[0]
    opts: list[tuple[str, str | None]] = []
    rest = line
    if _KEYTYPE_RE.fullmatch(first) is None:
        opts, end = _split_options(line)
        rest = line[end:].lstrip(_WS)

    seen: set[str] = set()
    is_ca = implicit_ca
    principals: frozenset[str] | None = None
    from_networks: tuple[IPv4Network | IPv6Network, ...] | None = None
    permitopen: list[Target] | None = None
    no_pf = False
    scopes = DEFAULT_SCOPES
    for name, value in opts:
        if name not in _VALUE_OPTIONS and name not in _FLAG_OPTIONS:
            raise _LineError(f"unknown option {_show(name)}")
        if name in seen and name != "permitopen":
            raise _LineError(f"option {_show(name)} is repeated")
        seen.add(name)
        if name in _FLAG_OPTIONS:
            if value is not None:
                raise _LineError(f"option {_show(name)} takes no value")
            if name == "cert-authority":
                is_ca = True
            else:
                no_pf = True
            continue
        if value is None:
            raise _LineError(f'option {_show(name)} needs a quoted value ({name}="...")')
        if name == "principals":
            principals = _parse_principals(value)
        elif name == "from":
            from_networks = _parse_from(value)
        elif name == "permitopen":
            permitopen = (permitopen or []) + _parse_permitopen(value)
        else:
            scopes = _parse_scopes(value)
    if principals is not None and not is_ca:
        raise _LineError("principals= requires cert-authority")

    parts = _SPLIT_RE.split(rest, maxsplit=2) if rest else []
    if not parts or not parts[0]:
        raise _LineError("missing key")
    keytype = parts[0]
    if _CERT_SUFFIX_RE.search(keytype):
        raise _LineError(f"certificate key type {_esc(keytype)} is not allowed here")
    if keytype != ED25519:
        if _KEYTYPE_RE.fullmatch(keytype) is None:
            raise _LineError(f"unknown key type {_show(keytype)}")
        raise _LineError(unsupported_type_message(keytype))
    if len(parts) < 2:
        raise _LineError("missing base64 key data")
    try:
        blob = strict_b64decode(parts[1])
    except ValueError:
        raise _LineError("invalid base64 key data") from None
    blob_type = blob_key_type(blob)
    if blob_type is not None and blob_type != ED25519:
        raise _LineError(f"key data is of type {blob_type}, not {ED25519}")
    try:
        raw = decode_ed25519_blob(blob)
    except KeyFormatError as exc:
        raise _LineError(str(exc)) from None
    options = KeyOptions(
        from_networks=from_networks,
        principals=principals,
        permitopen=tuple(permitopen) if permitopen is not None else None,
        no_port_forwarding=no_pf,
    )
    kind = CredentialKind.CERT_AUTHORITY if is_ca else CredentialKind.KEY
    comment = parts[2].strip(_WS) if len(parts) == 3 else ""
    return kind, raw, scopes, options, comment


def parse_authorized_keys(text: str, *, source: str, implicit_ca: bool = False) -> tuple[KeyEntry, ...]:
    """Parse a whole file. ``implicit_ca=True`` makes every line a CA line (the ``--cert-authority`` file).

    Raises ``AuthorizedKeysError`` listing every bad line; no entry of a file with an error is returned.
    """
    errors: list[str] = []
    entries: list[KeyEntry] = []
    first_line: dict[str, int] = {}
    for line_no, physical in enumerate(text.split("\n"), start=1):
        line = physical.removesuffix("\r").strip(_WS)
        if not line or line.startswith("#"):
            continue
        try:
            kind, raw, scopes, options, comment = _parse_line(line, implicit_ca)
        except _LineError as exc:
            errors.append(f"{source}:{line_no}: {exc}")
            continue
        fp = fingerprint(PublicKey(raw).blob)
        if fp in first_line:
            errors.append(f"{source}:{line_no}: duplicate key {fp} (also on line {first_line[fp]})")
            continue
        first_line[fp] = line_no
        entries.append(KeyEntry(kind, fp, raw, scopes, options, line_no, comment))
    if errors:
        raise AuthorizedKeysError(errors)
    return tuple(entries)
