"""Node key pairs from seed words: the library side of ``alknet keygen --from-mnemonic`` (secret.md §10).

Role table: identity ``m/74'/0'/0'/0'`` (comment ``alknet-identity``), host ``m/74'/0'/1'/0'``
(``alknet-host``), device N ``m/74'/0'/0'/{N}'`` (``alknet-device-N``, N >= 1). The seed exists only for the
duration of one call and is zeroed before returning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from alknet.secret.derive import DerivedKey, derive_ed25519_from_seed
from alknet.secret.mnemonic import mnemonic_to_seed
from alknet.secret.openssh import (
    ed25519_public_openssh,
    endpoint_id,
    openssh_fingerprint,
    write_keypair,
)
from alknet.secret.paths import IDENTITY_PATH, SSH_HOST_PATH, device_path

__all__ = [
    "KeyRole",
    "KeygenResult",
    "default_key_filename",
    "derive_role_key",
    "keygen_from_mnemonic",
    "role_comment",
    "role_path",
]


class KeyRole(StrEnum):
    """What a derived SSH key is for."""

    IDENTITY = "identity"
    HOST = "host"
    DEVICE = "device"


def _role(role: KeyRole | str) -> KeyRole:
    try:
        return KeyRole(role)
    except ValueError:
        raise ValueError("role must be identity, host or device") from None


def _device_number(role: KeyRole, device: int | None) -> int:
    """The checked device number for role device; 0 (unused) for the other roles."""
    if role is not KeyRole.DEVICE:
        if device is not None:
            raise ValueError("a device number is only valid with role device")
        return 0
    if device is None:
        raise ValueError("role device needs a device number (>= 1)")
    if isinstance(device, bool) or not isinstance(device, int) or device < 1:
        raise ValueError("device number must be an integer >= 1")
    return device


def role_path(role: KeyRole | str, device: int | None = None) -> str:
    """Derivation path of ``role`` (``device`` is required for, and only allowed with, role device)."""
    checked = _role(role)
    number = _device_number(checked, device)
    if checked is KeyRole.DEVICE:
        return device_path(number)
    return IDENTITY_PATH if checked is KeyRole.IDENTITY else SSH_HOST_PATH


def role_comment(role: KeyRole | str, device: int | None = None) -> str:
    """Public key comment: ``alknet-identity``, ``alknet-host`` or ``alknet-device-N``."""
    checked = _role(role)
    number = _device_number(checked, device)
    return f"alknet-device-{number}" if checked is KeyRole.DEVICE else f"alknet-{checked.value}"


def default_key_filename(role: KeyRole | str) -> str:
    """File name inside the state directory: ``host_key`` for the host role, else ``id_ed25519``."""
    return "host_key" if _role(role) is KeyRole.HOST else "id_ed25519"


def derive_role_key(
    mnemonic: str, passphrase: str = "", *, role: KeyRole | str = KeyRole.IDENTITY, device: int | None = None
) -> DerivedKey:
    """The ed25519 key of ``role`` for these words. Role and device are checked before the words."""
    path = role_path(role, device)
    seed = mnemonic_to_seed(mnemonic, passphrase)
    try:
        return derive_ed25519_from_seed(seed, path)
    finally:
        seed[:] = bytes(len(seed))


@dataclass(frozen=True)
class KeygenResult:
    """What ``keygen --from-mnemonic`` reports (no private material)."""

    path: str
    public_line: str
    fingerprint: str
    endpoint_id: str

    def summary(self) -> str:
        """``fingerprint=SHA256:... endpoint_id=<hex> path=PATH`` (the command's stdout line)."""
        return f"fingerprint={self.fingerprint} endpoint_id={self.endpoint_id} path={self.path}"


def keygen_from_mnemonic(
    path: str | os.PathLike[str],
    mnemonic: str,
    passphrase: str = "",
    *,
    role: KeyRole | str = KeyRole.IDENTITY,
    device: int | None = None,
    overwrite: bool = False,
) -> KeygenResult:
    """Derive the role's key and write ``path`` / ``path.pub`` atomically.

    Raises ``ValueError`` (role/device), ``InvalidMnemonicError`` or ``FileExistsError``; nothing is written
    in any of those cases.
    """
    comment = role_comment(role, device)
    key = derive_role_key(mnemonic, passphrase, role=role, device=device)
    write_keypair(path, key, comment=comment, overwrite=overwrite)
    return KeygenResult(
        path=os.fspath(path),
        public_line=ed25519_public_openssh(key.public_key, comment),
        fingerprint=openssh_fingerprint(key.public_key),
        endpoint_id=endpoint_id(key.public_key),
    )
