"""Exceptions of ``alknet.secret`` (secret.md §8).

Every message is fixed or names a position or a count; none ever quotes mnemonic words, passphrases, seeds,
keys, plaintexts or AAD. ``code`` is the call-protocol error code the ``/secrets/*`` operations answer with.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyUnlockedError",
    "DecryptionError",
    "IdentityMismatchError",
    "InvalidMnemonicError",
    "InvalidPathError",
    "LockedError",
    "SecretError",
]


class SecretError(Exception):
    """Base class of every error raised by ``alknet.secret`` (except plain ``ValueError`` for ranges)."""

    code: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False


class LockedError(SecretError):
    """A key or crypto operation was asked for while the secret service is locked."""

    code: ClassVar[str] = "LOCKED"

    def __init__(self, message: str = "secret service is locked") -> None:
        super().__init__(message)


class InvalidMnemonicError(SecretError):
    """Bad word count, a word outside the BIP39 English list (named by position), or a checksum mismatch."""

    code: ClassVar[str] = "INVALID_INPUT"


class IdentityMismatchError(SecretError):
    """The words and passphrase do not yield the ``expected_identity``."""

    code: ClassVar[str] = "INVALID_INPUT"

    def __init__(
        self, message: str = "identity mismatch: the words or the passphrase are not the expected ones"
    ) -> None:
        super().__init__(message)


class InvalidPathError(SecretError):
    """Derivation path syntax error, a normal index on ed25519, or a path outside the operation's subtree."""

    code: ClassVar[str] = "INVALID_INPUT"


class DecryptionError(SecretError):
    """Any decryption failure. The message is always ``"decryption failed"``, with no detail."""

    code: ClassVar[str] = "INVALID_INPUT"

    def __init__(self) -> None:
        super().__init__("decryption failed")


class AlreadyUnlockedError(SecretError):
    """``unlock`` while the service is already unlocked."""

    code: ClassVar[str] = "CONFLICT"

    def __init__(self, message: str = "secret service is already unlocked") -> None:
        super().__init__(message)
