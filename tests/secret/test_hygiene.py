"""Secret hygiene (secret.md §12): no words, passphrase, seed, private key, plaintext or AAD in logs,
exception messages, reprs or written files; lifecycle log lines only."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from alknet.core.logfmt import FIELDS_ATTR, format_line
from alknet.secret import (
    IDENTITY_PATH,
    SSH_HOST_PATH,
    DecryptionError,
    SecretError,
    SecretService,
    device_path,
    keygen_from_mnemonic,
    mnemonic_to_seed,
)

from .known import ABANDON, IDENTITY_FINGERPRINT, SEED_EMPTY, SEED_TREZOR

PLAINTEXT = "plaintext-marker-7f3a"
AAD = b"aad-marker-91c2"
PASSPHRASE = "TREZOR"


def _forbidden(private_keys: list[bytes], passwords: list[str]) -> list[str]:
    values = ["abandon", "about", PASSPHRASE, SEED_EMPTY, SEED_TREZOR, PLAINTEXT, AAD.decode()]
    for key in private_keys:
        values += [key.hex(), base64.b64encode(key).decode()]
    values += passwords
    return values


def _record_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.levelname} {r.getMessage()} {r.__dict__!r}" for r in records)


async def test_logs_and_errors_carry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    service = SecretService()
    errors: list[BaseException] = []

    async def expect_error(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (SecretError, ValueError) as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected an error")

    await expect_error(service.unlock("abandon " * 12))
    await expect_error(service.unlock("abandon abandn " + "abandon " * 9 + "about"))
    await expect_error(service.unlock(ABANDON, PASSPHRASE, expected_identity=IDENTITY_FINGERPRINT))
    await expect_error(service.encrypt(PLAINTEXT))
    assert await service.unlock(ABANDON) == IDENTITY_FINGERPRINT

    keys = [
        await service.derive_ed25519(IDENTITY_PATH),
        await service.derive_ed25519(SSH_HOST_PATH),
        await service.derive_ed25519(device_path(1)),
        await service.derive_encryption_key(key_version=2),
        await service.derive_encryption_key(key_version=3),
        await service.derive_ethereum_key(),
    ]
    passwords = [
        await service.derive_site_password("example.com"),
        await service.derive_password("m/74'/1'/0'/0'", 20),
    ]
    blob = await service.encrypt(PLAINTEXT, aad=AAD)
    assert await service.decrypt_text(blob, aad=AAD) == PLAINTEXT
    rotated = await service.rotate(blob, 3, aad=AAD)
    await expect_error(service.decrypt(rotated))
    await expect_error(service.decrypt({**rotated.to_dict(), "data": blob.data}, aad=AAD))
    await expect_error(service.derive_ed25519("m/74'/0'/0'/0"))
    await expect_error(service.derive_password("m/74'/1'/0'/0'", 7))
    await expect_error(service.unlock(ABANDON))
    await service.lock()
    await expect_error(service.decrypt(blob, aad=AAD))

    forbidden = _forbidden([k.private_key for k in keys], passwords)
    text = _record_text(caplog.records)
    for value in forbidden:
        assert value not in text, value
    for exc in errors:
        for value in forbidden:
            assert value not in str(exc), (type(exc).__name__, value)
            assert value not in repr(exc), (type(exc).__name__, value)
    assert any(isinstance(e, DecryptionError) for e in errors)

    secret_records = [r for r in caplog.records if r.name.startswith("alknet.secret")]
    lines = [
        format_line(r.levelno, r.getMessage(), getattr(r, FIELDS_ATTR, ()), time=None) for r in secret_records
    ]
    assert lines == [
        'level=WARNING msg="unlock failed" reason=invalid_mnemonic',
        'level=WARNING msg="unlock failed" reason=invalid_mnemonic',
        'level=WARNING msg="unlock failed" reason=identity_mismatch',
        f'level=INFO msg="secrets unlocked" fingerprint={IDENTITY_FINGERPRINT}',
        'level=INFO msg="secrets locked"',
    ]


async def test_reprs_carry_no_secrets() -> None:
    service = SecretService()
    await service.unlock(ABANDON, PASSPHRASE)
    key = await service.derive_ed25519(IDENTITY_PATH)
    text = repr(service) + repr(key) + str(key)
    for value in _forbidden([key.private_key], []):
        assert value not in text


def test_written_key_files_carry_no_words(tmp_path: Path) -> None:
    keygen_from_mnemonic(tmp_path / "id", ABANDON, PASSPHRASE)
    keygen_from_mnemonic(tmp_path / "host", ABANDON, role="host")
    seed_hex = mnemonic_to_seed(ABANDON).hex()
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        for value in ("abandon", "about", PASSPHRASE, seed_hex):
            assert value.encode() not in data, (path.name, value)
