"""DerivePassword: from a 32-byte derived key to printable ASCII without bias (secret.md §5)."""

from __future__ import annotations

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alknet.secret.errors import SecretError

__all__ = [
    "DEFAULT_PASSWORD_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "check_password_length",
    "password_from_key",
]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
DEFAULT_PASSWORD_LENGTH = 32

_OKM_LENGTH = 255 * 32  # the HKDF-SHA256 maximum; HKDF output is prefix-stable
_INFO = b"alknet-password"
_ALPHABET = 94  # "!" .. "~"
_ACCEPT_BELOW = 2 * _ALPHABET  # 188: bytes >= 188 are skipped (rejection sampling)


def check_password_length(length: object) -> int:
    """Return ``length`` if it is an integer in 8..1024, else raise ``ValueError``."""
    if isinstance(length, bool) or not isinstance(length, int):
        raise ValueError(f"length must be an integer in {MIN_PASSWORD_LENGTH} .. {MAX_PASSWORD_LENGTH}")
    if not MIN_PASSWORD_LENGTH <= length <= MAX_PASSWORD_LENGTH:
        raise ValueError(f"length must be in {MIN_PASSWORD_LENGTH} .. {MAX_PASSWORD_LENGTH}, got {length}")
    return length


def password_from_key(private_key: bytes | bytearray, length: int = DEFAULT_PASSWORD_LENGTH) -> str:
    """``length`` characters from ``chr(33)..chr(126)``: HKDF-SHA256 (no salt, info ``alknet-password``),
    bytes below 188 map to ``chr(0x21 + b % 94)``, the others are skipped."""
    count = check_password_length(length)
    if len(private_key) != 32:
        raise ValueError("private_key must be 32 bytes")
    okm = HKDF(algorithm=SHA256(), length=_OKM_LENGTH, salt=None, info=_INFO).derive(bytes(private_key))
    chars: list[str] = []
    for byte in okm:
        if byte < _ACCEPT_BELOW:
            chars.append(chr(0x21 + byte % _ALPHABET))
            if len(chars) == count:
                return "".join(chars)
    raise SecretError("password derivation exhausted")
