"""SLIP-0010 key derivation and the ``DerivedKey`` value (secret.md §3-§4).

Real SLIP-0010 through the ``slip10`` package: ed25519 (hardened indices only) and secp256k1 (BIP32 rules).
These functions take a seed and a path and check only the curve's rules; which subtree an operation may use
is checked by the service (``alknet.secret.paths.check_*``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slip10 import SLIP10

from alknet.secret.errors import InvalidPathError
from alknet.secret.paths import HARDENED, format_path, parse_path

__all__ = [
    "DerivedKey",
    "KeyType",
    "derive_aes_key_from_seed",
    "derive_ed25519_from_seed",
    "derive_secp256k1_from_seed",
    "ed25519_public_key",
    "secp256k1_public_key",
    "slip10_private_key",
]

_SEED_MIN = 16
_SEED_MAX = 64


class KeyType(StrEnum):
    """What a derived 32-byte private key is used as."""

    ED25519 = "ed25519"
    AES256GCM = "aes256gcm"
    SECP256K1 = "secp256k1"


_PUBLIC_LENGTH = {KeyType.ED25519: 32, KeyType.AES256GCM: 0, KeyType.SECP256K1: 33}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, repr=False)
class DerivedKey:
    """A key derived from the seed. ``repr``/``str`` never show ``private_key``."""

    key_type: KeyType
    path: str
    private_key: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_type, KeyType):
            raise ValueError("key_type must be a KeyType")
        if not isinstance(self.private_key, bytes) or len(self.private_key) != 32:
            raise ValueError("private_key must be 32 bytes")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _PUBLIC_LENGTH[self.key_type]:
            raise ValueError(f"public_key must be {_PUBLIC_LENGTH[self.key_type]} bytes for {self.key_type}")

    def to_json(self, *, include_private: bool) -> dict[str, str]:
        """``{key_type, path, public_key[, private_key]}`` with bytes as standard padded base64."""
        out = {"key_type": str(self.key_type), "path": self.path, "public_key": _b64(self.public_key)}
        if include_private:
            out["private_key"] = _b64(self.private_key)
        return out

    def __repr__(self) -> str:
        return (
            f"DerivedKey(key_type={self.key_type.value}, path={self.path}, "
            f"public_key={self.public_key.hex()})"
        )

    __str__ = __repr__


def _check_seed(seed: bytes | bytearray) -> None:
    if not isinstance(seed, bytes | bytearray) or not _SEED_MIN <= len(seed) <= _SEED_MAX:
        raise ValueError(f"seed must be {_SEED_MIN} to {_SEED_MAX} bytes")


def slip10_private_key(seed: bytes | bytearray, indices: Sequence[int], curve: str) -> bytes:
    """The 32-byte SLIP-0010 private key at ``indices`` for ``curve`` (``"ed25519"`` or ``"secp256k1"``)."""
    _check_seed(seed)
    if curve == "ed25519":
        for position, index in enumerate(indices, start=1):
            if index < HARDENED:
                raise InvalidPathError(
                    f"ed25519 derivation is hardened only: path component {position} is normal"
                )
    elif curve != "secp256k1":
        raise ValueError("curve must be 'ed25519' or 'secp256k1'")
    key = SLIP10.from_seed(seed, curve_name=curve).get_privkey_from_path(list(indices))
    return bytes(key)


def ed25519_public_key(private_key: bytes | bytearray) -> bytes:
    """Raw 32-byte Ed25519 public key of a 32-byte private key."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(private_key))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def secp256k1_public_key(private_key: bytes | bytearray) -> bytes:
    """33-byte compressed secp256k1 public key of a 32-byte private key."""
    key = ec.derive_private_key(int.from_bytes(private_key, "big"), ec.SECP256K1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def derive_ed25519_from_seed(seed: bytes | bytearray, path: str) -> DerivedKey:
    """SLIP-0010 ed25519 key at ``path`` (every component hardened)."""
    indices = parse_path(path)
    private = slip10_private_key(seed, indices, "ed25519")
    return DerivedKey(KeyType.ED25519, format_path(indices), private, ed25519_public_key(private))


def derive_aes_key_from_seed(seed: bytes | bytearray, path: str) -> DerivedKey:
    """The SLIP-0010 ed25519 private key at ``path`` used as a 32-byte AES-256 key (no public key)."""
    indices = parse_path(path)
    private = slip10_private_key(seed, indices, "ed25519")
    return DerivedKey(KeyType.AES256GCM, format_path(indices), private, b"")


def derive_secp256k1_from_seed(seed: bytes | bytearray, path: str) -> DerivedKey:
    """BIP32 / SLIP-0010 secp256k1 key at ``path`` (normal and hardened indices)."""
    indices = parse_path(path)
    private = slip10_private_key(seed, indices, "secp256k1")
    return DerivedKey(KeyType.SECP256K1, format_path(indices), private, secp256k1_public_key(private))
