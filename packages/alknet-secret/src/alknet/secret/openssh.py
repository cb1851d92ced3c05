"""OpenSSH key text, fingerprints, endpoint ids and key-pair files for derived keys (secret.md §10).

A thin layer over ``alknet.core.auth.keys`` (light: ``cryptography`` only, no asyncssh), so derived and random
keys share one implementation of the file format, the fingerprint and the atomic write. Private key files are
unencrypted (the words are the backup and the node starts unattended); protection is the file mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.keys import PublicKey, private_key_to_openssh
from alknet.core.auth.keys import write_keypair as _write_keypair
from alknet.secret.derive import DerivedKey, KeyType

__all__ = [
    "ed25519_private_openssh",
    "ed25519_public_openssh",
    "endpoint_id",
    "openssh_fingerprint",
    "openssh_public_blob",
    "write_keypair",
]


def _public(public_key: bytes | bytearray, comment: str = "") -> PublicKey:
    if not isinstance(public_key, bytes | bytearray):
        raise ValueError("an Ed25519 public key is 32 bytes")
    return PublicKey(bytes(public_key), comment)


def _private(private_key: bytes | bytearray) -> Ed25519PrivateKey:
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(bytes(private_key))


def openssh_public_blob(public_key: bytes | bytearray) -> bytes:
    """SSH wire encoding: ``string "ssh-ed25519" || string key`` (51 bytes)."""
    return _public(public_key).blob


def ed25519_private_openssh(private_key: bytes | bytearray, comment: str = "") -> bytes:
    """Unencrypted ``-----BEGIN OPENSSH PRIVATE KEY-----`` text of a 32-byte Ed25519 private key.

    The bytes are not deterministic (OpenSSH check integers are random); the key inside is.
    """
    return private_key_to_openssh(_private(private_key), comment)


def ed25519_public_openssh(public_key: bytes | bytearray, comment: str = "") -> str:
    """``ssh-ed25519 <base64 blob>[ comment]`` (no trailing newline)."""
    return _public(public_key, comment).line


def openssh_fingerprint(public_key: bytes | bytearray) -> str:
    """``SHA256:`` + unpadded base64 of SHA-256 over the wire blob, as ``ssh-keygen -l`` prints it."""
    return _public(public_key).fingerprint


def endpoint_id(public_key: bytes | bytearray) -> str:
    """Lowercase hex of the 32 raw public key bytes (the node's endpoint id)."""
    return _public(public_key).endpoint_id


def write_keypair(
    path: str | os.PathLike[str], key: DerivedKey, *, comment: str, overwrite: bool = False
) -> None:
    """Write ``PATH`` (OpenSSH private key, 0600) and ``PATH.pub`` (one line ending in ``\\n``, 0644).

    Each file goes to a temp file in the same directory, is fsynced and moved into place with ``os.link``
    (refuses an existing target) or, with ``overwrite``, ``os.replace``. Without ``overwrite`` an existing
    ``PATH`` or ``PATH.pub`` is a ``FileExistsError`` before anything is written. A comment with a line break
    is a ``ValueError``.
    """
    if not isinstance(key, DerivedKey) or key.key_type is not KeyType.ED25519:
        raise ValueError("write_keypair needs an ed25519 DerivedKey")
    _write_keypair(Path(os.fspath(path)), _private(key.private_key), comment, force=overwrite)
