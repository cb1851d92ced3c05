"""DerivedKey and SLIP-0010 derivation (secret.md §3-§4)."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slip10 import SLIP10

from alknet.secret import (
    IDENTITY_PATH,
    SSH_HOST_PATH,
    DerivedKey,
    InvalidPathError,
    KeyType,
    derive_aes_key_from_seed,
    derive_ed25519_from_seed,
    derive_secp256k1_from_seed,
    device_path,
    encryption_path,
    mnemonic_to_seed,
)

from .known import ABANDON, IDENTITY_PRIVATE


def test_public_key_matches_cryptography_for_random_seeds() -> None:
    for _ in range(20):
        seed = os.urandom(64)
        key = derive_ed25519_from_seed(seed, IDENTITY_PATH)
        expected = (
            Ed25519PrivateKey.from_private_bytes(key.private_key)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        assert key.public_key == expected
        slip = SLIP10.from_seed(seed, curve_name="ed25519").get_child_from_path(IDENTITY_PATH)
        assert slip.pubkey == b"\x00" + key.public_key
        assert slip.privkey == key.private_key


def test_repr_and_str_hide_private_key() -> None:
    key = derive_ed25519_from_seed(mnemonic_to_seed(ABANDON), IDENTITY_PATH)
    for text in (repr(key), str(key), f"{key}"):
        assert IDENTITY_PRIVATE not in text
        assert base64.b64encode(key.private_key).decode() not in text
        assert key.public_key.hex() in text
        assert "m/74'/0'/0'/0'" in text


def test_to_json() -> None:
    key = derive_ed25519_from_seed(mnemonic_to_seed(ABANDON), "m/74h/0h/0h/0h")
    public = key.to_json(include_private=False)
    assert public == {
        "key_type": "ed25519",
        "path": "m/74'/0'/0'/0'",
        "public_key": base64.b64encode(key.public_key).decode(),
    }
    full = key.to_json(include_private=True)
    assert base64.b64decode(full["private_key"], validate=True).hex() == IDENTITY_PRIVATE
    aes = derive_aes_key_from_seed(mnemonic_to_seed(ABANDON), encryption_path(2))
    assert aes.to_json(include_private=False)["public_key"] == ""
    assert aes.key_type is KeyType.AES256GCM


def test_distinct_keys_for_one_seed() -> None:
    seed = mnemonic_to_seed(ABANDON)
    keys = [
        derive_ed25519_from_seed(seed, IDENTITY_PATH).private_key,
        derive_ed25519_from_seed(seed, device_path(1)).private_key,
        derive_ed25519_from_seed(seed, SSH_HOST_PATH).private_key,
        derive_aes_key_from_seed(seed, encryption_path(2)).private_key,
    ]
    assert len(set(keys)) == len(keys)


def test_ed25519_is_hardened_only() -> None:
    with pytest.raises(InvalidPathError, match="hardened only"):
        derive_ed25519_from_seed(bytes(16), "m/0")
    with pytest.raises(InvalidPathError, match="hardened only"):
        derive_aes_key_from_seed(bytes(16), "m/0'/1")


def test_secp256k1_allows_normal_indices() -> None:
    key = derive_secp256k1_from_seed(bytes(range(16)), "m/0h/1/2h/2/1000000000")
    # BIP32 test vector 1, chain m/0H/1/2H/2/1000000000
    assert key.private_key.hex() == "471b76e389e528d6de6d816857e012c5455051cad6660850e58372a6c3e6e7c8"
    assert key.public_key.hex() == "022a471424da5e657499d1ff51cb43c47481a03b1e77f951fe64cec9f5a48f7011"
    assert key.path == "m/0'/1/2'/2/1000000000"


@pytest.mark.parametrize("seed", [b"", bytes(15), bytes(65), "00" * 32])
def test_seed_length_checked(seed: object) -> None:
    with pytest.raises(ValueError):
        derive_ed25519_from_seed(seed, "m/0'")  # type: ignore[arg-type]


def test_derived_key_validates_fields() -> None:
    with pytest.raises(ValueError):
        DerivedKey(KeyType.ED25519, "m", bytes(31), bytes(32))
    with pytest.raises(ValueError):
        DerivedKey(KeyType.ED25519, "m", bytes(32), bytes(33))
    with pytest.raises(ValueError):
        DerivedKey(KeyType.AES256GCM, "m", bytes(32), bytes(1))
    with pytest.raises(ValueError):
        DerivedKey("ed25519", "m", bytes(32), bytes(32))  # type: ignore[arg-type]
