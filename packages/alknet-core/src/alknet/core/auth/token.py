"""Signed timestamp tokens (auth-and-config.md §5.1) and redaction helpers.

Token = base64url (no padding, exactly 139 characters) of ``key_id(32) || unix seconds (8, big-endian) ||
Ed25519 signature(64) over the first 40 bytes``. Light module (no asyncssh).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from alknet.core.auth.authorized_keys import KeyEntry
from alknet.core.auth.keys import raw_public_key, token_key_id
from alknet.core.auth.policy import AuthPolicy

__all__ = [
    "TOKEN_BYTES",
    "TOKEN_LENGTH",
    "TokenVerdict",
    "check_token",
    "decode_token",
    "mint_token",
    "redact_text",
    "redact_url",
    "verify_token",
]

TOKEN_BYTES = 104
TOKEN_LENGTH = 139
REDACTED_QUERY_VALUE = "REDACTED"
REDACTED_TEXT = "<redacted>"

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{139}")
_TEXT_SECRET_RE = re.compile(r"(?<![A-Za-z0-9_-])(?:alk_[A-Za-z0-9_-]+|[A-Za-z0-9_-]{139}(?![A-Za-z0-9_-]))")


class TokenVerdict(StrEnum):
    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_PERMITTED = "not_permitted"
    DISABLED = "disabled"


def mint_token(key: Ed25519PrivateKey, ts: int) -> str:
    """A token for ``key`` stamped with unix seconds ``ts`` (deterministic: Ed25519 signatures are)."""
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**64:
        raise ValueError("token timestamp must be an integer from 0 to 2**64-1")
    head = token_key_id(raw_public_key(key)) + struct.pack(">Q", ts)
    raw = head + key.sign(head)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: object) -> tuple[bytes, int, bytes] | None:
    """``(key_id, ts, signature)``, or ``None`` unless ``token`` is 139 canonical base64url characters.

    The length is checked before anything is decoded, so huge inputs cost nothing.
    """
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or _TOKEN_RE.fullmatch(token) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_BYTES or base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != token:
        return None
    (ts,) = struct.unpack(">Q", raw[32:40])
    return raw[:32], ts, raw[40:]


def check_token(
    token: object,
    index: AuthPolicy,
    *,
    now: float,
    max_age: int | None = None,
    remote_ip: IPv4Address | IPv6Address | None = None,
) -> tuple[TokenVerdict, KeyEntry | None]:
    """Verify ``token`` against ``index`` in the §5.1 order; on ``OK`` also return the signing key's entry.

    ``max_age`` defaults to ``index.token_max_age``. When ``index.token_enabled`` is false the verdict is
    ``DISABLED`` for every token.
    """
    if not index.token_enabled:
        return TokenVerdict.DISABLED, None
    decoded = decode_token(token)
    if decoded is None:
        return TokenVerdict.MALFORMED, None
    key_id, ts, signature = decoded
    entry = index.token_entry(key_id)
    if entry is None:
        return TokenVerdict.UNKNOWN_KEY, None
    try:
        Ed25519PublicKey.from_public_bytes(entry.raw_key).verify(signature, key_id + struct.pack(">Q", ts))
    except InvalidSignature:
        return TokenVerdict.BAD_SIGNATURE, None
    limit = index.token_max_age if max_age is None else max_age
    if abs(now - ts) > limit:
        return TokenVerdict.EXPIRED, None
    if entry.options.no_port_forwarding or not entry.options.allows_address(remote_ip):
        return TokenVerdict.NOT_PERMITTED, None
    return TokenVerdict.OK, entry


def verify_token(
    token: object,
    index: AuthPolicy,
    *,
    now: float,
    max_age: int | None = None,
    remote_ip: IPv4Address | IPv6Address | None = None,
) -> TokenVerdict:
    """The verdict of ``check_token`` alone."""
    return check_token(token, index, now=now, max_age=max_age, remote_ip=remote_ip)[0]


def redact_url(url: str) -> str:
    """Replace the value of every ``token`` query parameter with ``REDACTED`` (everything else is kept)."""
    from urllib.parse import unquote_plus

    frag_at = url.find("#")
    head, frag = (url, "") if frag_at < 0 else (url[:frag_at], url[frag_at:])
    q_at = head.find("?")
    if q_at < 0:
        return url
    base, query = head[: q_at + 1], head[q_at + 1 :]
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name = parts[i].split("=", 1)[0]
        if unquote_plus(name).strip().lower() == "token":
            parts[i] = f"{name}={REDACTED_QUERY_VALUE}"
    return base + "".join(parts) + frag


def redact_text(text: str) -> str:
    """Replace every ``alk_`` API key and every 139-character token-shaped word with ``<redacted>``."""
    return _TEXT_SECRET_RE.sub(REDACTED_TEXT, text)
