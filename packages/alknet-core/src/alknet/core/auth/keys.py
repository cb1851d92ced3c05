"""OpenSSH Ed25519 keys: loading, parsing, fingerprints, generation and key files.

Light module: standard library and ``cryptography`` only (no asyncssh). Every refusal raises
``alknet.core.errors.KeyFormatError`` with a one-line message that never contains key material.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from alknet.core.errors import KeyFormatError

__all__ = [
    "ED25519",
    "MSG_ENCRYPTED",
    "MSG_PEM",
    "PublicKey",
    "blob_key_type",
    "decode_ed25519_blob",
    "endpoint_id",
    "fingerprint",
    "generate_private_key",
    "is_fingerprint",
    "load_private_key",
    "parse_public_key",
    "private_key_to_openssh",
    "public_key_of",
    "raw_public_key",
    "strict_b64decode",
    "token_key_id",
    "unsupported_type_message",
    "write_keypair",
]

ED25519 = "ssh-ed25519"
MSG_PEM = "PEM keys are not supported; convert the key to OpenSSH format (e.g. ssh-keygen -p -f <file>)"
MSG_ENCRYPTED = "key is encrypted; a passphrase is required"
MSG_BAD_PASSPHRASE = "bad passphrase"

_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_END = b"-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\x00"
_PEM_BEGIN_RE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_PUBLIC_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PUBLIC KEY-----")
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_PRINTABLE_NAME_RE = re.compile(r"[\x21-\x7e]{1,64}")
_B64_STD_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _show_type(name: str | bytes) -> str:
    """A key type name safe to put in a one-line message."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if _PRINTABLE_NAME_RE.fullmatch(name):
        return name
    return "<unprintable>"


def unsupported_type_message(name: str | bytes) -> str:
    return f"unsupported key type {_show_type(name)} (only ssh-ed25519 is accepted)"


# --------------------------------------------------------------------------------------------- wire helpers


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise ValueError("truncated")
    (n,) = struct.unpack_from(">I", buf, pos)
    pos += 4
    if n > len(buf) - pos:
        raise ValueError("truncated")
    return buf[pos : pos + n], pos + n


def strict_b64decode(text: str) -> bytes:
    """Standard base64 with padding, decoded strictly: only the base64 alphabet, correct padding, canonical
    (re-encoding reproduces the input, so non-zero trailing bits are refused). Raises ``ValueError``."""
    if not text or len(text) % 4 or _B64_STD_RE.fullmatch(text) is None:
        raise ValueError("invalid base64")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("invalid base64")
    return data


def _blob(raw: bytes) -> bytes:
    return _ssh_string(ED25519.encode()) + _ssh_string(raw)


def blob_key_type(blob: bytes) -> str | None:
    """The printable key type name at the start of an SSH wire blob, or ``None`` when there is none."""
    try:
        name, _ = _read_string(blob, 0)
    except ValueError:
        return None
    shown = _show_type(name)
    return None if shown == "<unprintable>" else shown


def decode_ed25519_blob(blob: bytes) -> bytes:
    """The 32 raw key bytes of an ``ssh-ed25519`` wire blob. Raises ``KeyFormatError`` naming another type."""
    try:
        name, pos = _read_string(blob, 0)
    except ValueError:
        raise KeyFormatError("malformed public key data") from None
    if name != ED25519.encode():
        raise KeyFormatError(unsupported_type_message(name))
    try:
        raw, pos = _read_string(blob, pos)
    except ValueError:
        raise KeyFormatError("malformed ssh-ed25519 key data") from None
    if len(raw) != 32 or pos != len(blob):
        raise KeyFormatError("malformed ssh-ed25519 key data")
    return raw


# --------------------------------------------------------------------------------------------- fingerprints


def fingerprint(blob: bytes) -> str:
    """OpenSSH fingerprint of an SSH wire-encoded public key: ``SHA256:`` + unpadded base64 of its SHA-256."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def is_fingerprint(s: object) -> TypeGuard[str]:
    """Strict syntax: ``SHA256:`` (that case) + 43 base64 characters, no padding, canonical last char."""
    if not isinstance(s, str) or len(s) != 50 or _FINGERPRINT_RE.fullmatch(s) is None:
        return False
    body = s[7:]
    try:
        digest = base64.b64decode(body + "=", validate=True)
    except binascii.Error:
        return False
    return base64.b64encode(digest).decode("ascii").rstrip("=") == body


def token_key_id(raw32: bytes) -> bytes:
    """SHA-256 of the raw 32-byte Ed25519 public key (used only inside tokens)."""
    if len(raw32) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(raw32).digest()


def endpoint_id(raw32: bytes) -> str:
    """64 lowercase hex characters of the raw 32-byte public key (quic/iroh endpoint id)."""
    if len(raw32) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return raw32.hex()


# --------------------------------------------------------------------------------------------- public keys


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with its comment. ``repr`` shows only the fingerprint."""

    raw: bytes
    comment: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        if not isinstance(self.comment, str) or "\n" in self.comment or "\r" in self.comment:
            raise ValueError("a key comment must be one line of text")

    @classmethod
    def from_blob(cls, blob: bytes, comment: str = "") -> PublicKey:
        return cls(decode_ed25519_blob(blob), comment)

    @property
    def blob(self) -> bytes:
        return _blob(self.raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def endpoint_id(self) -> str:
        return endpoint_id(self.raw)

    @property
    def token_key_id(self) -> bytes:
        return token_key_id(self.raw)

    @property
    def line(self) -> str:
        text = f"{ED25519} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{text} {self.comment}" if self.comment else text

    def to_cryptography(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint})"


def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes_raw()


def public_key_of(key: Ed25519PrivateKey, comment: str = "") -> PublicKey:
    return PublicKey(raw_public_key(key), comment)


def parse_public_key(text: str | bytes) -> PublicKey:
    """Parse one ``ssh-ed25519 <base64> [comment]`` line (surrounding blank lines are allowed)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFormatError("not an OpenSSH public key (not UTF-8 text)") from None
    lines = [ln.strip(" \t\r") for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise KeyFormatError("empty public key")
    if _PEM_PUBLIC_RE.match(lines[0]) or _PEM_BEGIN_RE.match(lines[0].encode("utf-8", "replace")):
        raise KeyFormatError(MSG_PEM)
    if len(lines) != 1:
        raise KeyFormatError("expected exactly one public key line")
    parts = re.split(r"[ \t]+", lines[0], maxsplit=2)
    keytype = parts[0]
    if keytype != ED25519:
        raise KeyFormatError(unsupported_type_message(keytype))
    if len(parts) < 2:
        raise KeyFormatError("missing base64 key data")
    try:
        blob = strict_b64decode(parts[1])
    except ValueError:
        raise KeyFormatError("invalid base64 key data") from None
    raw = decode_ed25519_blob(blob)
    comment = parts[2] if len(parts) == 3 else ""
    return PublicKey(raw, comment)


# --------------------------------------------------------------------------------------------- private keys


def _container(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Decode the OpenSSH private key container far enough to name the key type and cipher.

    Returns ``(pem_bytes, ciphername, public_blob)`` where ``pem_bytes`` starts at the BEGIN marker.
    """
    stripped = data.lstrip(b" \t\r\n")
    if not stripped.startswith(_BEGIN):
        if _PEM_BEGIN_RE.match(stripped):
            raise KeyFormatError(MSG_PEM)
        if stripped.startswith(b"ssh-") or stripped.startswith(b"ecdsa-"):
            raise KeyFormatError("this is a public key; an OpenSSH private key file is needed")
        raise KeyFormatError("not an OpenSSH private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)")
    end = stripped.find(_END)
    if end < 0:
        raise KeyFormatError("malformed OpenSSH private key")
    body = b"".join(stripped[len(_BEGIN) : end].split())
    try:
        raw = base64.b64decode(body, validate=True)
        if not raw.startswith(_MAGIC):
            raise ValueError("magic")
        pos = len(_MAGIC)
        cipher, pos = _read_string(raw, pos)
        _kdf, pos = _read_string(raw, pos)
        _kdfopts, pos = _read_string(raw, pos)
        if pos + 4 > len(raw):
            raise ValueError("truncated")
        (nkeys,) = struct.unpack_from(">I", raw, pos)
        pos += 4
        if nkeys != 1:
            raise ValueError("nkeys")
        pub_blob, pos = _read_string(raw, pos)
        _enc, pos = _read_string(raw, pos)
        keytype, _ = _read_string(pub_blob, 0)
    except (ValueError, binascii.Error):
        raise KeyFormatError("malformed OpenSSH private key") from None
    if keytype != ED25519.encode():
        raise KeyFormatError(unsupported_type_message(keytype))
    return stripped[: end + len(_END)] + b"\n", cipher, pub_blob


def load_private_key(source: os.PathLike[str] | bytes, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an OpenSSH Ed25519 private key from a path or from the file's bytes.

    Refusals (all ``KeyFormatError``): PEM formats, other key types (named), an encrypted key without
    ``passphrase``, a wrong passphrase (``bad passphrase``), and malformed files.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, os.PathLike):
        data = Path(source).read_bytes()
    else:
        raise TypeError("load_private_key() takes a Path or the key file's bytes")
    pem, cipher, pub_blob = _container(data)
    encrypted = cipher != b"none"
    if encrypted and passphrase is None:
        raise KeyFormatError(MSG_ENCRYPTED)
    try:
        key = load_ssh_private_key(pem, passphrase if encrypted else None)
    except UnsupportedAlgorithm as exc:
        if "bcrypt" in str(exc):
            raise KeyFormatError(
                "encrypted OpenSSH keys need the 'bcrypt' package (pip install bcrypt)"
            ) from None
        raise KeyFormatError(f"unsupported cipher {_show_type(cipher)}") from None
    except (ValueError, TypeError):
        if encrypted:
            raise KeyFormatError(MSG_BAD_PASSPHRASE) from None
        raise KeyFormatError("malformed OpenSSH private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError("malformed OpenSSH private key")
    if _blob(raw_public_key(key)) != pub_blob:
        raise KeyFormatError("malformed OpenSSH private key (public and private parts differ)")
    return key


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_openssh(key: Ed25519PrivateKey, comment: str = "") -> bytes:
    """Serialise ``key`` as an unencrypted ``BEGIN OPENSSH PRIVATE KEY`` file carrying ``comment``."""
    if "\n" in comment or "\r" in comment:
        raise ValueError("a key comment must be one line of text")
    raw_pub = raw_public_key(key)
    seed = key.private_bytes_raw()
    check = os.urandom(4)
    private = (
        check
        + check
        + _ssh_string(ED25519.encode())
        + _ssh_string(raw_pub)
        + _ssh_string(seed + raw_pub)
        + _ssh_string(comment.encode("utf-8"))
    )
    private += bytes(range(1, 1 + (-len(private) % 8)))
    body = (
        _MAGIC
        + _ssh_string(b"none")
        + _ssh_string(b"none")
        + _ssh_string(b"")
        + struct.pack(">I", 1)
        + _ssh_string(_blob(raw_pub))
        + _ssh_string(private)
    )
    b64 = base64.b64encode(body)
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return _BEGIN + b"\n" + b"\n".join(lines) + b"\n" + _END + b"\n"


# --------------------------------------------------------------------------------------------- key files


def _write_new(target: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write ``data`` to a temp file in ``target``'s directory, fsync, then link (exclusive) or replace."""
    fd = -1
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if force:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise _exists(target) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


def _exists(path: Path) -> FileExistsError:
    err = FileExistsError(f"{path} already exists")
    err.errno = errno.EEXIST
    err.filename = str(path)
    return err


def write_keypair(path: Path, key: Ed25519PrivateKey, comment: str, *, force: bool = False) -> PublicKey:
    """Write ``path`` (private key, mode 0600) and ``path.pub`` (``ssh-ed25519 <b64> comment``, mode 0644).

    Without ``force`` an existing ``path`` or ``path.pub`` raises ``FileExistsError`` naming it before
    anything is written; files appear whole (temp file, fsync, link/replace).
    """
    if not isinstance(comment, str) or "\n" in comment or "\r" in comment:
        raise ValueError("a key comment must be one line of text")
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if not force:
        for p in (path, pub_path):
            if os.path.lexists(p):
                raise _exists(p)
    pub = public_key_of(key, comment)
    _write_new(path, private_key_to_openssh(key, comment), 0o600, force=force)
    _write_new(pub_path, (pub.line + "\n").encode("utf-8"), 0o644, force=force)
    return pub
