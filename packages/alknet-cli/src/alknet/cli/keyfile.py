"""Loading private key files for the CLI, with the passphrase prompt of cli.md §1."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.keys import load_private_key
from alknet.core.errors import ConfigError, KeyFormatError

__all__ = ["load_identity_key"]

_NEEDS_PASSPHRASE = "key is encrypted; a passphrase is required"


def load_identity_key(path: Path) -> Ed25519PrivateKey:
    """Load an OpenSSH Ed25519 private key; ask for a passphrase on a terminal when it is encrypted.

    Errors are ``ConfigError`` (exit 2) naming the file, then the ``KeyFormatError`` message.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        return load_private_key(data)
    except KeyFormatError as exc:
        if str(exc) != _NEEDS_PASSPHRASE:
            raise ConfigError(f"{path}: {exc}") from None
    if not sys.stdin.isatty():
        raise ConfigError(f"{path}: {_NEEDS_PASSPHRASE} (no terminal to ask for it)")
    passphrase = getpass.getpass(f"passphrase for {path}: ").encode()
    try:
        return load_private_key(data, passphrase=passphrase)
    except KeyFormatError as exc:
        raise ConfigError(f"{path}: {exc}") from None
