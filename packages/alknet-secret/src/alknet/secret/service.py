"""``SecretService``: the locked/unlocked seed holder and its local async API (secret.md §7).

One seed per process, held in a ``bytearray`` that is overwritten with zeros on ``lock()``. Derived private
keys are cached in ``bytearray``s (LRU, keyed by curve and canonical path) that are zeroed on eviction and on
lock. An ``asyncio.Lock`` serialises ``unlock``/``lock`` against operations; operations run without awaiting
inside the lock, so one that started before ``lock()`` finishes with the old seed and one that starts after
fails with ``LockedError``. Nothing here writes to disk or logs secret material.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping

from alknet.core.logfmt import log_event
from alknet.secret.crypto import (
    CURRENT_KEY_VERSION,
    EncryptedData,
    as_encrypted_data,
    blob_key_version,
    check_key_version,
    decrypt_with_key,
    encrypt_with_key,
)
from alknet.secret.derive import (
    DerivedKey,
    KeyType,
    ed25519_public_key,
    secp256k1_public_key,
    slip10_private_key,
)
from alknet.secret.errors import (
    AlreadyUnlockedError,
    IdentityMismatchError,
    InvalidMnemonicError,
    LockedError,
)
from alknet.secret.mnemonic import mnemonic_to_seed, validate_mnemonic
from alknet.secret.openssh import endpoint_id, openssh_fingerprint
from alknet.secret.password import DEFAULT_PASSWORD_LENGTH, check_password_length, password_from_key
from alknet.secret.paths import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    check_ed25519_path,
    check_encryption_path,
    check_ethereum_path,
    check_password_path,
    encryption_path,
    parse_path,
    site_password_path,
)

__all__ = ["DEFAULT_CACHE_SIZE", "SecretService"]

DEFAULT_CACHE_SIZE = 256

_log = logging.getLogger("alknet.secret")
_HEX_ID = re.compile(r"[0-9a-fA-F]{64}")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")

_CacheKey = tuple[str, str]  # (curve, canonical path)


def _zero(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def _normalize_expected(expected: str | None) -> str | None:
    if expected is None:
        return None
    if isinstance(expected, str):
        if _HEX_ID.fullmatch(expected):
            return expected.lower()
        if _FINGERPRINT.fullmatch(expected):
            return expected
    raise ValueError("expected_identity must be an endpoint id (64 hex characters) or a SHA256: fingerprint")


def _plaintext_bytes(plaintext: str | bytes) -> bytes:
    if isinstance(plaintext, str):
        try:
            return plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("plaintext is not valid Unicode text") from None
    if isinstance(plaintext, bytes | bytearray | memoryview):
        return bytes(plaintext)
    raise ValueError("plaintext must be str or bytes")


class SecretService:
    """Holds one BIP39 seed while unlocked and derives keys, passwords and blobs from it."""

    def __init__(
        self, *, current_key_version: int = CURRENT_KEY_VERSION, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self._current_key_version = check_key_version(current_key_version)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError("cache_size must be a non-negative integer")
        self._cache_size = cache_size
        self._seed: bytearray | None = None
        self._cache: OrderedDict[_CacheKey, bytearray] = OrderedDict()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SecretService(locked={self.locked}, cache={len(self._cache)})"

    @property
    def locked(self) -> bool:
        return self._seed is None

    @property
    def current_key_version(self) -> int:
        return self._current_key_version

    # -- state machine -------------------------------------------------------------------------------------

    async def unlock(
        self, mnemonic: str, passphrase: str = "", *, expected_identity: str | None = None
    ) -> str:
        """LOCKED -> UNLOCKED. Returns the OpenSSH fingerprint of the identity key (``IDENTITY_PATH``).

        ``expected_identity`` (endpoint id hex or ``SHA256:`` fingerprint) guards against a mistyped
        passphrase: on mismatch the computed seed is zeroed and the service stays locked.
        """
        async with self._lock:
            if self._seed is not None:
                raise AlreadyUnlockedError()
            expected = _normalize_expected(expected_identity)
            try:
                normalized = validate_mnemonic(mnemonic)
            except InvalidMnemonicError:
                log_event(_log, logging.WARNING, "unlock failed", reason="invalid_mnemonic")
                raise
            seed = await asyncio.to_thread(mnemonic_to_seed, normalized, passphrase)
            try:
                private = bytearray(slip10_private_key(seed, parse_path(IDENTITY_PATH), "ed25519"))
                public = ed25519_public_key(private)
                fingerprint = openssh_fingerprint(public)
                if expected is not None and expected not in (fingerprint, endpoint_id(public)):
                    _zero(private)
                    log_event(_log, logging.WARNING, "unlock failed", reason="identity_mismatch")
                    raise IdentityMismatchError()
            except BaseException:
                _zero(seed)
                raise
            self._seed = seed
            self._store((str(KeyType.ED25519), IDENTITY_PATH), private)
            log_event(_log, logging.INFO, "secrets unlocked", fingerprint=fingerprint)
            return fingerprint

    async def lock(self) -> None:
        """UNLOCKED -> LOCKED: zero the seed and every cached key, then drop them. No-op when locked."""
        async with self._lock:
            if self._seed is None:
                return
            _zero(self._seed)
            self._seed = None
            for buffer in self._cache.values():
                _zero(buffer)
            self._cache.clear()
            log_event(_log, logging.INFO, "secrets locked")

    def _buffers_for_tests(self) -> tuple[bytearray | None, list[bytearray]]:
        """Private test hook: the live seed buffer and cache buffers (to check they are zeroed on lock)."""
        return self._seed, list(self._cache.values())

    # -- cache ---------------------------------------------------------------------------------------------

    def _require_seed(self) -> bytearray:
        if self._seed is None:
            raise LockedError()
        return self._seed

    def _store(self, key: _CacheKey, private: bytearray) -> None:
        if self._cache_size == 0:
            _zero(private)
            return
        old = self._cache.pop(key, None)
        if old is not None and old is not private:
            _zero(old)
        self._cache[key] = private
        while len(self._cache) > self._cache_size:
            _, evicted = self._cache.popitem(last=False)
            _zero(evicted)

    def _private(self, curve: str, canonical: str) -> bytes:
        seed = self._require_seed()
        key = (curve, canonical)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return bytes(cached)
        private = slip10_private_key(seed, parse_path(canonical), curve)
        self._store(key, bytearray(private))
        return private

    # -- derivation ----------------------------------------------------------------------------------------

    async def derive_ed25519(self, path: str) -> DerivedKey:
        """Ed25519 key under ``m/74'/0'/...`` (>= 4 components, all hardened)."""
        async with self._lock:
            self._require_seed()
            canonical = check_ed25519_path(path)
            private = self._private("ed25519", canonical)
            return DerivedKey(KeyType.ED25519, canonical, private, ed25519_public_key(private))

    async def derive_encryption_key(
        self, path: str | None = None, *, key_version: int | None = None
    ) -> DerivedKey:
        """AES-256 key at ``m/74'/2'/0'/{i}'``, given by ``path`` or by ``key_version`` (exactly one)."""
        async with self._lock:
            self._require_seed()
            if path is not None and key_version is None:
                canonical = check_encryption_path(path)
            elif path is None and key_version is not None:
                canonical = encryption_path(key_version)
            else:
                raise ValueError("give exactly one of path or key_version")
            return DerivedKey(KeyType.AES256GCM, canonical, self._private("ed25519", canonical), b"")

    async def derive_ethereum_key(self, path: str = ETHEREUM_PATH) -> DerivedKey:
        """secp256k1 key at ``m/44'/60'/{a}'/{c}/{i}`` (default ``m/44'/60'/0'/0/0``)."""
        async with self._lock:
            self._require_seed()
            canonical = check_ethereum_path(path)
            private = self._private("secp256k1", canonical)
            return DerivedKey(KeyType.SECP256K1, canonical, private, secp256k1_public_key(private))

    async def derive_password(self, path: str, length: int = DEFAULT_PASSWORD_LENGTH) -> str:
        """``length`` (8..1024) printable ASCII characters from the key at ``m/74'/1'/0'/{i}'``."""
        async with self._lock:
            self._require_seed()
            count = check_password_length(length)
            canonical = check_password_path(path)
            return password_from_key(self._private("ed25519", canonical), count)

    async def derive_site_password(self, site: str, length: int = DEFAULT_PASSWORD_LENGTH) -> str:
        """``derive_password(site_password_path(site), length)``; the site string is used exactly as given."""
        async with self._lock:
            self._require_seed()
            count = check_password_length(length)
            canonical = check_password_path(site_password_path(site))
            return password_from_key(self._private("ed25519", canonical), count)

    # -- encryption ----------------------------------------------------------------------------------------

    def _encrypt(self, plaintext: bytes, version: int, aad: bytes | None) -> EncryptedData:
        key = self._private("ed25519", encryption_path(version))
        return encrypt_with_key(key, plaintext, version, aad)

    def _decrypt(self, blob: EncryptedData | Mapping[str, object], aad: bytes | None) -> bytes:
        parsed = as_encrypted_data(blob)
        key = self._private("ed25519", encryption_path(blob_key_version(parsed)))
        return decrypt_with_key(key, parsed, aad)

    async def encrypt(
        self, plaintext: str | bytes, key_version: int | None = None, *, aad: bytes | None = None
    ) -> EncryptedData:
        """AES-256-GCM blob under ``key_version`` (default: the service's current version)."""
        async with self._lock:
            self._require_seed()
            version = self._current_key_version if key_version is None else check_key_version(key_version)
            return self._encrypt(_plaintext_bytes(plaintext), version, aad)

    async def decrypt(self, blob: EncryptedData | Mapping[str, object], *, aad: bytes | None = None) -> bytes:
        """Plaintext; the key comes from the blob's own ``key_version`` (any failure: ``DecryptionError``)."""
        async with self._lock:
            self._require_seed()
            return self._decrypt(blob, aad)

    async def decrypt_text(
        self, blob: EncryptedData | Mapping[str, object], *, aad: bytes | None = None
    ) -> str:
        """``decrypt`` then UTF-8 decode (invalid UTF-8 is ``ValueError``: decryption itself succeeded)."""
        data = await self.decrypt(blob, aad=aad)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("plaintext is not valid UTF-8") from None

    async def rotate(
        self,
        blob: EncryptedData | Mapping[str, object],
        to_version: int | None = None,
        *,
        aad: bytes | None = None,
    ) -> EncryptedData:
        """Decrypt with the blob's version, re-encrypt under ``to_version`` (default: current)."""
        async with self._lock:
            self._require_seed()
            version = self._current_key_version if to_version is None else check_key_version(to_version)
            return self._encrypt(self._decrypt(blob, aad), version, aad)
