"""DerivePassword (secret.md §5)."""

from __future__ import annotations

import pytest

from alknet.secret import SecretError, derive_ed25519_from_seed, mnemonic_to_seed, password_from_key
from alknet.secret import password as password_module

from .known import SITE_PASSWORD_16, SITE_PASSWORD_32


@pytest.fixture(scope="module")
def site_key() -> bytes:
    return derive_ed25519_from_seed(
        mnemonic_to_seed("abandon " * 11 + "about"), "m/74'/1'/0'/595175158'"
    ).private_key


def test_known_answers_and_prefix_stability(site_key: bytes) -> None:
    assert password_from_key(site_key) == SITE_PASSWORD_32
    assert password_from_key(site_key, 16) == SITE_PASSWORD_16
    long = password_from_key(site_key, 1024)
    assert long.startswith(SITE_PASSWORD_32)
    assert len(long) == 1024
    assert all(33 <= ord(c) <= 126 for c in long)


@pytest.mark.parametrize("length", [7, 1025, 0, -1, True, 32.0, "32"])
def test_length_range(site_key: bytes, length: object) -> None:
    with pytest.raises(ValueError):
        password_from_key(site_key, length)  # type: ignore[arg-type]


def test_bounds_accepted(site_key: bytes) -> None:
    assert len(password_from_key(site_key, 8)) == 8


def test_key_length_checked() -> None:
    with pytest.raises(ValueError):
        password_from_key(bytes(31))


def test_exhaustion_never_returns_short_password(monkeypatch: pytest.MonkeyPatch, site_key: bytes) -> None:
    monkeypatch.setattr(password_module, "_ACCEPT_BELOW", 0)  # every byte rejected
    with pytest.raises(SecretError, match=r"^password derivation exhausted$"):
        password_from_key(site_key, 8)
