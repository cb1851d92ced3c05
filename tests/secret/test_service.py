"""SecretService state machine and local async API (secret.md §7)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from alknet.secret import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    SSH_HOST_PATH,
    AlreadyUnlockedError,
    DecryptionError,
    EncryptedData,
    IdentityMismatchError,
    InvalidMnemonicError,
    InvalidPathError,
    KeyType,
    LockedError,
    SecretService,
    generate_mnemonic,
)

from .known import (
    ABANDON,
    AES_V2,
    ETH_PRIVATE,
    ETH_PUBLIC,
    HOST_PUBLIC,
    IDENTITY_FINGERPRINT,
    IDENTITY_PRIVATE,
    IDENTITY_PUBLIC,
    KNOWN_BLOB,
    PATH0_PASSWORD_20,
    SITE_PASSWORD_32,
)

Op = Callable[[SecretService], Awaitable[Any]]

ALL_OPS: dict[str, Op] = {
    "derive_ed25519": lambda s: s.derive_ed25519(IDENTITY_PATH),
    "derive_ed25519_bad_path": lambda s: s.derive_ed25519("garbage"),
    "derive_encryption_key": lambda s: s.derive_encryption_key("m/74'/2'/0'/0'"),
    "derive_encryption_key_version": lambda s: s.derive_encryption_key(key_version=2),
    "derive_ethereum_key": lambda s: s.derive_ethereum_key(),
    "derive_password": lambda s: s.derive_password("m/74'/1'/0'/0'"),
    "derive_password_bad_length": lambda s: s.derive_password("m/74'/1'/0'/0'", 3),
    "derive_site_password": lambda s: s.derive_site_password("example.com"),
    "encrypt": lambda s: s.encrypt("hello"),
    "decrypt": lambda s: s.decrypt(KNOWN_BLOB),
    "decrypt_garbage": lambda s: s.decrypt({"nonsense": 1}),
    "decrypt_text": lambda s: s.decrypt_text(KNOWN_BLOB),
    "rotate": lambda s: s.rotate(KNOWN_BLOB),
}


async def unlocked(words: str = ABANDON, **kwargs: Any) -> SecretService:
    service = SecretService(**kwargs)
    await service.unlock(words)
    return service


@pytest.mark.parametrize("name", sorted(ALL_OPS))
async def test_locked_service_refuses_every_op(name: str) -> None:
    service = SecretService()
    assert service.locked is True
    with pytest.raises(LockedError) as info:
        await ALL_OPS[name](service)
    assert info.value.code == "LOCKED"
    assert info.value.retryable is False


@pytest.mark.parametrize("name", sorted(ALL_OPS))
async def test_relocked_service_refuses_every_op(name: str) -> None:
    service = await unlocked()
    await service.lock()
    with pytest.raises(LockedError):
        await ALL_OPS[name](service)


async def test_unlock_returns_identity_fingerprint() -> None:
    service = SecretService()
    assert await service.unlock(ABANDON) == IDENTITY_FINGERPRINT
    assert service.locked is False
    assert service.current_key_version == 2


async def test_known_answers_through_service() -> None:
    service = await unlocked()
    identity = await service.derive_ed25519("m/74h/0h/0h/0h")
    assert identity.key_type is KeyType.ED25519
    assert identity.path == IDENTITY_PATH
    assert identity.private_key.hex() == IDENTITY_PRIVATE
    assert identity.public_key.hex() == IDENTITY_PUBLIC
    assert (await service.derive_ed25519(SSH_HOST_PATH)).public_key.hex() == HOST_PUBLIC
    aes = await service.derive_encryption_key(key_version=2)
    assert (aes.key_type, aes.path, aes.private_key.hex(), aes.public_key) == (
        KeyType.AES256GCM,
        "m/74'/2'/0'/0'",
        AES_V2,
        b"",
    )
    assert (await service.derive_encryption_key("m/74'/2'/0'/0'")).private_key.hex() == AES_V2
    eth = await service.derive_ethereum_key()
    assert (eth.key_type, eth.path, eth.private_key.hex(), eth.public_key.hex()) == (
        KeyType.SECP256K1,
        ETHEREUM_PATH,
        ETH_PRIVATE,
        ETH_PUBLIC,
    )
    assert await service.derive_site_password("example.com") == SITE_PASSWORD_32
    assert await service.derive_password("m/74'/1'/0'/595175158'") == SITE_PASSWORD_32
    assert await service.derive_password("m/74'/1'/0'/0'", 20) == PATH0_PASSWORD_20
    assert await service.decrypt(KNOWN_BLOB) == b"alknet"
    assert await service.decrypt_text(EncryptedData(**KNOWN_BLOB)) == "alknet"  # type: ignore[arg-type]


async def test_unlock_twice_conflicts_and_keeps_state() -> None:
    service = await unlocked()
    before = await service.derive_ed25519(IDENTITY_PATH)
    with pytest.raises(AlreadyUnlockedError) as info:
        await service.unlock(generate_mnemonic(12))
    assert info.value.code == "CONFLICT"
    assert await service.derive_ed25519(IDENTITY_PATH) == before


async def test_invalid_mnemonic_stays_locked() -> None:
    service = SecretService()
    with pytest.raises(InvalidMnemonicError, match="checksum mismatch"):
        await service.unlock("abandon " * 12)
    assert service.locked is True
    seed, cache = service._buffers_for_tests()
    assert seed is None and cache == []


async def test_expected_identity_guard() -> None:
    service = SecretService()
    with pytest.raises(IdentityMismatchError) as info:
        await service.unlock(ABANDON, "TREZOR", expected_identity=IDENTITY_FINGERPRINT)
    assert info.value.code == "INVALID_INPUT"
    assert service.locked is True
    assert service._buffers_for_tests() == (None, [])
    assert await service.unlock(ABANDON, "", expected_identity=IDENTITY_FINGERPRINT) == IDENTITY_FINGERPRINT
    await service.lock()
    with pytest.raises(IdentityMismatchError):
        await service.unlock(ABANDON, "TREZOR", expected_identity=IDENTITY_PUBLIC)
    assert await service.unlock(ABANDON, expected_identity=IDENTITY_PUBLIC) == IDENTITY_FINGERPRINT
    await service.lock()
    assert await service.unlock(ABANDON, expected_identity=IDENTITY_PUBLIC.upper()) == IDENTITY_FINGERPRINT


@pytest.mark.parametrize("bad", ["", "SHA256:short", IDENTITY_PUBLIC[:-1], "sha256:" + "A" * 43, 5])
async def test_malformed_expected_identity(bad: object) -> None:
    service = SecretService()
    with pytest.raises(ValueError):
        await service.unlock(ABANDON, expected_identity=bad)  # type: ignore[arg-type]
    assert service.locked is True


async def test_lock_zeroes_seed_and_cache() -> None:
    service = await unlocked()
    await service.derive_ed25519(IDENTITY_PATH)
    await service.derive_ed25519(SSH_HOST_PATH)
    await service.derive_ethereum_key()
    await service.derive_site_password("example.com")
    await service.encrypt(b"x")
    seed, cache = service._buffers_for_tests()
    assert seed is not None and len(seed) == 64 and any(seed)
    assert len(cache) >= 5 and all(len(b) == 32 and any(b) for b in cache)
    await service.lock()
    assert service.locked is True
    assert seed == bytearray(64)
    assert all(b == bytearray(32) for b in cache)
    assert service._buffers_for_tests() == (None, [])
    assert repr(service) == "SecretService(locked=True, cache=0)"


async def test_lock_twice_and_relock_restores_same_keys() -> None:
    service = await unlocked()
    first = await service.derive_ed25519(IDENTITY_PATH)
    await service.lock()
    await service.lock()
    await SecretService().lock()
    await service.unlock(ABANDON)
    assert await service.derive_ed25519(IDENTITY_PATH) == first


async def test_concurrent_derive_and_lock() -> None:
    service = await unlocked()
    expected = bytes.fromhex(IDENTITY_PRIVATE)

    async def derive() -> bytes | None:
        try:
            return (await service.derive_ed25519(IDENTITY_PATH)).private_key
        except LockedError:
            return None

    tasks = [asyncio.create_task(derive()) for _ in range(50)]
    lock_task = asyncio.create_task(service.lock())
    tasks += [asyncio.create_task(derive()) for _ in range(50)]
    results = await asyncio.gather(*tasks)
    await lock_task
    assert all(r in (expected, None) for r in results)
    assert results[:50] == [expected] * 50  # started before lock(): complete with the old seed
    assert results[50:] == [None] * 50  # started after: LockedError


async def test_ops_during_unlock_wait_for_it() -> None:
    service = SecretService()
    unlock = asyncio.create_task(service.unlock(ABANDON))
    await asyncio.sleep(0)  # unlock holds the lock while PBKDF2 runs in a thread
    key = await service.derive_ed25519(IDENTITY_PATH)
    await unlock
    assert key.private_key.hex() == IDENTITY_PRIVATE


async def test_blob_survives_lock_with_same_words_only() -> None:
    service = await unlocked()
    blob = await service.encrypt("secret text", aad=b"ctx")
    await service.lock()
    await service.unlock(ABANDON)
    assert await service.decrypt_text(blob, aad=b"ctx") == "secret text"
    await service.lock()
    await service.unlock(generate_mnemonic(12))
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        await service.decrypt(blob, aad=b"ctx")


async def test_versions_and_rotate() -> None:
    service = await unlocked()
    v2 = await service.encrypt(b"payload")
    assert v2.key_version == 2
    v5 = await service.rotate(v2, 5)
    assert v5.key_version == 5
    assert await service.decrypt(v5) == b"payload"
    same = await service.rotate(v5, 5)
    assert same.key_version == 5 and same.iv != v5.iv and same.salt != v5.salt and same.data != v5.data
    back = await service.rotate(v5.to_dict())
    assert back.key_version == 2
    assert await service.decrypt(back) == b"payload"
    # the key is chosen by the blob's key_version: claiming another version fails
    with pytest.raises(DecryptionError):
        await service.decrypt({**v5.to_dict(), "key_version": 2})
    with pytest.raises(DecryptionError):
        await service.decrypt({**v2.to_dict(), "key_version": 3})
    # v1 is not supported
    with pytest.raises(DecryptionError):
        await service.decrypt({**v2.to_dict(), "key_version": 1})


async def test_rotate_with_aad() -> None:
    service = await unlocked()
    blob = await service.encrypt(b"p", aad=b"a")
    with pytest.raises(DecryptionError):
        await service.rotate(blob)
    rotated = await service.rotate(blob, 3, aad=b"a")
    assert await service.decrypt(rotated, aad=b"a") == b"p"
    with pytest.raises(DecryptionError):
        await service.decrypt(rotated)


async def test_configured_current_version() -> None:
    service = await unlocked(current_key_version=7)
    assert service.current_key_version == 7
    blob = await service.encrypt("x")
    assert blob.key_version == 7
    assert (await service.rotate(KNOWN_BLOB)).key_version == 7
    assert (await service.encrypt("x", 2)).key_version == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"current_key_version": 1}, {"current_key_version": True}, {"cache_size": -1}, {"cache_size": 1.5}],
)
def test_constructor_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SecretService(**kwargs)


async def test_value_errors_leave_service_unchanged() -> None:
    service = await unlocked()
    for call in (
        lambda: service.derive_password("m/74'/1'/0'/0'", 7),
        lambda: service.derive_site_password("example.com", 1025),
        lambda: service.derive_site_password(""),
        lambda: service.encrypt("x", 1),
        lambda: service.rotate(KNOWN_BLOB, 1),
        lambda: service.derive_encryption_key(),
        lambda: service.derive_encryption_key("m/74'/2'/0'/0'", key_version=2),
        lambda: service.derive_encryption_key(key_version=1),
        lambda: service.encrypt("\ud800"),
    ):
        with pytest.raises(ValueError):
            await call()
    assert service.locked is False
    assert await service.derive_site_password("example.com") == SITE_PASSWORD_32


async def test_path_subtrees_enforced() -> None:
    service = await unlocked()
    with pytest.raises(InvalidPathError, match="hardened only"):
        await service.derive_ed25519("m/74'/0'/0'/0")
    for call in (
        lambda: service.derive_ed25519("m/44'/501'/0'/0'"),
        lambda: service.derive_password("m/74'/0'/0'/0'"),
        lambda: service.derive_encryption_key("m/74'/1'/0'/0'"),
        lambda: service.derive_ethereum_key("m/44'/60'/0'/2/0"),
    ):
        with pytest.raises(InvalidPathError):
            await call()


async def test_decrypt_text_invalid_utf8_is_value_error() -> None:
    service = await unlocked()
    blob = await service.encrypt(b"\xff\xfe")
    assert await service.decrypt(blob) == b"\xff\xfe"
    with pytest.raises(ValueError, match="UTF-8") as info:
        await service.decrypt_text(blob)
    assert not isinstance(info.value, DecryptionError)


async def test_cache_is_lru_and_zeroes_evicted_entries() -> None:
    service = await unlocked(cache_size=2)
    _, cache = service._buffers_for_tests()
    identity_buffer = cache[0]
    await service.derive_ed25519(SSH_HOST_PATH)
    await service.derive_ed25519("m/74'/0'/0'/1'")  # evicts the identity entry
    _, cache = service._buffers_for_tests()
    assert len(cache) == 2
    assert identity_buffer == bytearray(32)
    assert (await service.derive_ed25519(IDENTITY_PATH)).private_key.hex() == IDENTITY_PRIVATE


async def test_cache_size_zero_keeps_nothing() -> None:
    service = await unlocked(cache_size=0)
    assert (await service.derive_ed25519(IDENTITY_PATH)).private_key.hex() == IDENTITY_PRIVATE
    assert service._buffers_for_tests()[1] == []


async def test_repr_shows_only_state() -> None:
    service = await unlocked()
    assert repr(service) == "SecretService(locked=False, cache=1)"
