"""``EncryptedData``: AES-256-GCM blobs with key versions (secret.md §6).

Wire form: ``{"key_version": N, "salt": b64(32 bytes), "iv": b64(12 bytes), "data": b64(ciphertext||tag)}``.
The IV and salt are fresh random bytes on every encryption; the salt is stored for format compatibility and
is not used by the cipher (so it is not authenticated). Every decryption failure is the one
``DecryptionError("decryption failed")``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from alknet.secret.errors import DecryptionError

__all__ = [
    "CURRENT_KEY_VERSION",
    "MAX_KEY_VERSION",
    "MIN_KEY_VERSION",
    "EncryptedData",
    "as_encrypted_data",
    "blob_key_version",
    "check_key_version",
    "decrypt_with_key",
    "encrypt_with_key",
    "key_check_value",
]

CURRENT_KEY_VERSION = 2
MIN_KEY_VERSION = 2  # v1 (legacy password-based blobs) is not supported
MAX_KEY_VERSION = 2**31 + 1  # version N uses the hardened index N-2

IV_LENGTH = 12
SALT_LENGTH = 32
TAG_LENGTH = 16
_FIELDS = ("key_version", "salt", "iv", "data")

# Private hook: the source of IV and salt bytes. Tests may replace it; the public API never takes an IV.
_randbytes: Callable[[int], bytes] = os.urandom


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def check_key_version(key_version: object) -> int:
    """``key_version`` if it is an integer in 2 .. 2^31+1 (bools refused), else ``ValueError``."""
    if isinstance(key_version, bool) or not isinstance(key_version, int):
        raise ValueError(f"key_version must be an integer in {MIN_KEY_VERSION} .. {MAX_KEY_VERSION}")
    if not MIN_KEY_VERSION <= key_version <= MAX_KEY_VERSION:
        raise ValueError(f"key_version must be in {MIN_KEY_VERSION} .. {MAX_KEY_VERSION}, got {key_version}")
    return key_version


@dataclass(frozen=True)
class EncryptedData:
    """One encrypted blob; strings are standard base64 with padding."""

    key_version: int
    salt: str
    iv: str
    data: str

    def to_dict(self) -> dict[str, int | str]:
        return {"key_version": self.key_version, "salt": self.salt, "iv": self.iv, "data": self.data}

    def to_json(self) -> str:
        """Compact JSON with the four fields in wire order."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> EncryptedData:
        """Build from a mapping; extra fields are ignored. Anything malformed is ``DecryptionError``."""
        if not isinstance(d, Mapping):
            raise DecryptionError()
        try:
            values = [d[name] for name in _FIELDS]
        except (KeyError, TypeError):
            raise DecryptionError() from None
        version, salt, iv, data = values
        if isinstance(version, bool) or not isinstance(version, int):
            raise DecryptionError()
        if not (isinstance(salt, str) and isinstance(iv, str) and isinstance(data, str)):
            raise DecryptionError()
        return cls(key_version=version, salt=salt, iv=iv, data=data)

    @classmethod
    def from_json(cls, text: str | bytes) -> EncryptedData:
        """Parse the JSON wire form; invalid JSON or a malformed object is ``DecryptionError``."""
        try:
            obj = json.loads(text)
        except (ValueError, TypeError, RecursionError):
            raise DecryptionError() from None
        if not isinstance(obj, dict):
            raise DecryptionError()
        return cls.from_dict(obj)


def as_encrypted_data(blob: EncryptedData | Mapping[str, object]) -> EncryptedData:
    """``blob`` itself, or ``EncryptedData.from_dict(blob)``; anything else is ``DecryptionError``."""
    if isinstance(blob, EncryptedData):
        return blob
    return EncryptedData.from_dict(blob)


def _check_key(key: bytes | bytearray) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ValueError("key must be 32 bytes")
    return bytes(key)


def _check_aad(aad: bytes | None) -> bytes | None:
    if aad is not None and not isinstance(aad, bytes | bytearray):
        raise ValueError("aad must be bytes or None")
    return None if aad is None else bytes(aad)


def encrypt_with_key(
    key: bytes | bytearray, plaintext: bytes, key_version: int, aad: bytes | None = None
) -> EncryptedData:
    """AES-256-GCM with a fresh 12-byte IV and a fresh 32-byte salt; ``aad`` is not stored."""
    version = check_key_version(key_version)
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise ValueError("plaintext must be bytes")
    salt = _randbytes(SALT_LENGTH)
    iv = _randbytes(IV_LENGTH)
    data = AESGCM(_check_key(key)).encrypt(iv, bytes(plaintext), _check_aad(aad))
    return EncryptedData(key_version=version, salt=_b64encode(salt), iv=_b64encode(iv), data=_b64encode(data))


def blob_key_version(blob: EncryptedData | Mapping[str, object]) -> int:
    """The blob's key version if it is decryptable in principle, else ``DecryptionError``."""
    version = as_encrypted_data(blob).key_version
    if isinstance(version, bool) or not isinstance(version, int):
        raise DecryptionError()
    if not MIN_KEY_VERSION <= version <= MAX_KEY_VERSION:
        raise DecryptionError()
    return version


def decrypt_with_key(
    key: bytes | bytearray, blob: EncryptedData | Mapping[str, object], aad: bytes | None = None
) -> bytes:
    """Decrypt ``blob``; ``aad`` must be the bytes given to encrypt. Any failure: ``DecryptionError``."""
    aes_key = _check_key(key)
    checked_aad = _check_aad(aad)
    parsed = as_encrypted_data(blob)
    blob_key_version(parsed)
    try:
        _b64decode(parsed.salt)
        iv = _b64decode(parsed.iv)
        data = _b64decode(parsed.data)
    except (binascii.Error, ValueError, TypeError):
        raise DecryptionError() from None
    if len(iv) != IV_LENGTH or len(data) < TAG_LENGTH:
        raise DecryptionError()
    try:
        return AESGCM(aes_key).decrypt(iv, data, checked_aad)
    except (InvalidTag, ValueError, TypeError, OverflowError):
        raise DecryptionError() from None


def key_check_value(key: bytes | bytearray) -> str:
    """First 8 bytes of SHA-256 over the key, hex: identifies a key without revealing it."""
    return hashlib.sha256(_check_key(key)).digest()[:8].hex()
