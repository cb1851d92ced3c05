"""Derivation paths: strict syntax, the alknet path table and the per-operation subtrees (secret.md §3).

Coin type ``74'`` is alknet's; account ``0'`` holds identities, ``1'`` site passwords, ``2'`` encryption keys.
Error messages name component positions, never echo the path text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alknet.secret.errors import InvalidPathError

__all__ = [
    "ETHEREUM_PATH",
    "HARDENED",
    "IDENTITY_PATH",
    "MAX_PATH_COMPONENTS",
    "MAX_SITE_LENGTH",
    "SSH_HOST_PATH",
    "canonical_path",
    "check_ed25519_path",
    "check_encryption_path",
    "check_ethereum_path",
    "check_password_path",
    "device_path",
    "encryption_path",
    "format_path",
    "parse_path",
    "site_password_index",
    "site_password_path",
]

HARDENED = 0x80000000
MAX_PATH_COMPONENTS = 16
MAX_SITE_LENGTH = 1024
_MAX_KEY_VERSION = HARDENED + 1  # version N uses index N-2, which must stay below 2^31

IDENTITY_PATH = "m/74'/0'/0'/0'"
SSH_HOST_PATH = "m/74'/0'/1'/0'"
ETHEREUM_PATH = "m/44'/60'/0'/0/0"

_DIGITS = frozenset("0123456789")
_H = HARDENED


def parse_path(path: str) -> tuple[int, ...]:
    """Parse ``m/a'/b/c'...`` into indices (hardened ones have ``0x80000000`` added).

    Components are ASCII decimal without leading zeros, below 2^31, optionally followed by ``'`` or ``h``;
    at most 16 components; no whitespace or empty components. ``"m"`` alone is the master node.
    """
    if not isinstance(path, str):
        raise InvalidPathError("path must be a string")
    if not path:
        raise InvalidPathError("path is empty")
    if path[0] != "m":
        raise InvalidPathError("path must start with 'm'")
    if len(path) == 1:
        return ()
    if path[1] != "/":
        raise InvalidPathError("path must continue with '/' after 'm'")
    parts = path[2:].split("/")
    if len(parts) > MAX_PATH_COMPONENTS:
        raise InvalidPathError(f"path has more than {MAX_PATH_COMPONENTS} components")
    out: list[int] = []
    for position, part in enumerate(parts, start=1):
        out.append(_parse_component(part, position))
    return tuple(out)


def _parse_component(part: str, position: int) -> int:
    if not part:
        raise InvalidPathError(f"path component {position} is empty")
    hardened = part[-1] in ("'", "h")
    digits = part[:-1] if hardened else part
    if not digits or not all(c in _DIGITS for c in digits):
        raise InvalidPathError(
            f"path component {position} is not a decimal index optionally followed by ' or h"
        )
    if len(digits) > 1 and digits[0] == "0":
        raise InvalidPathError(f"path component {position} has a leading zero")
    if len(digits) > 10 or int(digits) >= HARDENED:
        raise InvalidPathError(f"path component {position} is out of range (must be below 2^31)")
    value = int(digits)
    return value + HARDENED if hardened else value


def format_path(indices: Sequence[int]) -> str:
    """Canonical text of a path: ``m`` then ``/i`` or ``/i'`` per component."""
    parts = ["m"]
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2 * HARDENED:
            raise ValueError("path indices must be integers in 0 .. 2^32-1")
        parts.append(f"{index - HARDENED}'" if index >= HARDENED else str(index))
    if len(parts) - 1 > MAX_PATH_COMPONENTS:
        raise ValueError(f"a path has at most {MAX_PATH_COMPONENTS} components")
    return "/".join(parts)


def canonical_path(path: str) -> str:
    """``format_path(parse_path(path))``: ``h`` becomes ``'``."""
    return format_path(parse_path(path))


def _check_index(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low} .. {high}")
    return value


def device_path(n: int) -> str:
    """Path of device / worker identity ``n`` (``n >= 1``; 0 is the primary identity)."""
    device = _check_index(n, "device number", 1, HARDENED - 1)
    return f"m/74'/0'/0'/{device}'"


def site_password_index(site: str) -> int:
    """First 4 bytes of SHA-256 over the UTF-8 site string, big-endian, masked to 31 bits."""
    if not isinstance(site, str) or not site:
        raise ValueError("site must be a non-empty string")
    if len(site) > MAX_SITE_LENGTH:
        raise ValueError(f"site must be at most {MAX_SITE_LENGTH} characters")
    try:
        data = site.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("site is not valid Unicode text") from None
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big") & 0x7FFFFFFF


def site_password_path(site: str) -> str:
    """``m/74'/1'/0'/{site_password_index(site)}'``."""
    return f"m/74'/1'/0'/{site_password_index(site)}'"


def encryption_path(key_version: int) -> str:
    """Path of the AES key of ``key_version`` (N >= 2): ``m/74'/2'/0'/{N-2}'``."""
    version = _check_index(key_version, "key_version", 2, _MAX_KEY_VERSION)
    return f"m/74'/2'/0'/{version - 2}'"


def check_ed25519_path(path: str) -> str:
    """Canonical path if it is under ``m/74'/0'/`` with >= 4 components, all hardened."""
    indices = parse_path(path)
    for position, index in enumerate(indices, start=1):
        if index < HARDENED:
            raise InvalidPathError(
                f"ed25519 derivation is hardened only: path component {position} is normal"
            )
    if len(indices) < 4 or indices[:2] != (74 + _H, 0 + _H):
        raise InvalidPathError("ed25519 keys are derived only under m/74'/0'/ with at least 4 components")
    return format_path(indices)


def _check_account(path: str, account: int, shape: str) -> str:
    indices = parse_path(path)
    if len(indices) != 4 or indices[:3] != (74 + _H, account + _H, 0 + _H) or indices[3] < HARDENED:
        raise InvalidPathError(f"path must be {shape}")
    return format_path(indices)


def check_password_path(path: str) -> str:
    """Canonical path if it is exactly ``m/74'/1'/0'/{i}'``."""
    return _check_account(path, 1, "m/74'/1'/0'/{i}' for a password")


def check_encryption_path(path: str) -> str:
    """Canonical path if it is exactly ``m/74'/2'/0'/{i}'``."""
    return _check_account(path, 2, "m/74'/2'/0'/{i}' for an encryption key")


def check_ethereum_path(path: str) -> str:
    """Canonical path if it is ``m/44'/60'/{a}'/{c}/{i}`` with ``c`` in {0, 1} and ``c``, ``i`` normal."""
    indices = parse_path(path)
    if (
        len(indices) != 5
        or indices[:2] != (44 + _H, 60 + _H)
        or indices[2] < HARDENED
        or indices[3] not in (0, 1)
        or indices[4] >= HARDENED
    ):
        raise InvalidPathError("path must be m/44'/60'/{a}'/{c}/{i} with c 0 or 1 and c, i normal")
    return format_path(indices)
