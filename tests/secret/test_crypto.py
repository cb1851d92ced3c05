"""EncryptedData and AES-256-GCM (secret.md §6): known answer, fresh IVs, one generic decryption error."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from alknet.secret import DecryptionError, EncryptedData, decrypt_with_key, encrypt_with_key, key_check_value
from alknet.secret import crypto as crypto_module

from .known import AES_V2, KNOWN_BLOB, KNOWN_BLOB_JSON

KEY = bytes.fromhex(AES_V2)
OTHER_KEY = bytes(32)


def _decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_generic(info: pytest.ExceptionInfo[DecryptionError]) -> None:
    exc = info.value
    assert type(exc) is DecryptionError
    assert str(exc) == "decryption failed"
    assert exc.args == ("decryption failed",)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


def test_known_blob() -> None:
    assert decrypt_with_key(KEY, KNOWN_BLOB) == b"alknet"
    blob = EncryptedData.from_json(KNOWN_BLOB_JSON)
    assert blob == EncryptedData(**KNOWN_BLOB)  # type: ignore[arg-type]
    assert blob.to_json() == KNOWN_BLOB_JSON
    assert blob.to_dict() == KNOWN_BLOB
    assert decrypt_with_key(KEY, blob) == b"alknet"


def test_encrypt_known_answer_through_private_iv_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto_module, "_randbytes", lambda n: bytes(n))
    assert encrypt_with_key(KEY, b"alknet", 2).to_json() == KNOWN_BLOB_JSON


def test_fresh_iv_and_salt() -> None:
    a = encrypt_with_key(KEY, b"same plaintext", 2)
    b = encrypt_with_key(KEY, b"same plaintext", 2)
    assert a.iv != b.iv
    assert a.salt != b.salt
    assert a.data != b.data
    assert decrypt_with_key(KEY, a) == decrypt_with_key(KEY, b) == b"same plaintext"
    assert len(_decode(a.iv)) == 12
    assert len(_decode(a.salt)) == 32
    assert len(_decode(a.data)) == len(b"same plaintext") + 16


def test_empty_plaintext() -> None:
    blob = encrypt_with_key(KEY, b"", 2)
    assert len(_decode(blob.data)) == 16
    assert decrypt_with_key(KEY, blob) == b""


def test_aad_must_match() -> None:
    blob = encrypt_with_key(KEY, b"x", 2, aad=b"context-1")
    assert decrypt_with_key(KEY, blob, aad=b"context-1") == b"x"
    for wrong in (b"context-2", None, b""):
        with pytest.raises(DecryptionError) as info:
            decrypt_with_key(KEY, blob, aad=wrong)
        assert_generic(info)
    plain = encrypt_with_key(KEY, b"x", 2)
    with pytest.raises(DecryptionError) as info:
        decrypt_with_key(KEY, plain, aad=b"context-1")
    assert_generic(info)


def test_wrong_key() -> None:
    with pytest.raises(DecryptionError) as info:
        decrypt_with_key(OTHER_KEY, KNOWN_BLOB)
    assert_generic(info)


def _bit_flips(text: str) -> Iterator[str]:
    raw = _decode(text)
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        yield _encode(bytes(flipped))


@pytest.mark.parametrize("field", ["iv", "data"])
def test_every_bit_flip_in_iv_and_data_fails(field: str) -> None:
    for tampered in _bit_flips(KNOWN_BLOB[field]):  # type: ignore[arg-type]
        with pytest.raises(DecryptionError) as info:
            decrypt_with_key(KEY, {**KNOWN_BLOB, field: tampered})
        assert_generic(info)


BAD_VALUES: dict[str, list[object]] = {
    "key_version": [1, 0, -2, 2**31 + 2, True, False, "2", 2.0, None, [2]],
    "salt": ["not base64!", "AAA", "AAAA\n", None, 7, b"AAAA", "ÄÄÄÄ"],
    "iv": [
        "AAAAAAAAAAAAAAA",  # bad padding
        _encode(bytes(11)),
        _encode(bytes(13)),
        "",
        None,
        12,
        "AAAAAAAA AAAAAAA",
    ],
    "data": [
        _encode(bytes(15)),
        "",
        "m/h97nNfuhWtDnf2aVtjpzLBp5ChBA=",
        "m/h97nNfuhWtDnf2aVtjpzLBp5ChBA==\n",
        None,
    ],
}


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, values in BAD_VALUES.items() for value in values]
)
def test_malformed_field_is_generic_error(field: str, value: object) -> None:
    with pytest.raises(DecryptionError) as info:
        decrypt_with_key(KEY, {**KNOWN_BLOB, field: value})
    assert_generic(info)


@pytest.mark.parametrize("field", ["key_version", "salt", "iv", "data"])
def test_missing_field_is_generic_error(field: str) -> None:
    blob = {k: v for k, v in KNOWN_BLOB.items() if k != field}
    with pytest.raises(DecryptionError) as info:
        decrypt_with_key(KEY, blob)
    assert_generic(info)
    with pytest.raises(DecryptionError) as info:
        EncryptedData.from_dict(blob)
    assert_generic(info)


def test_salt_is_stored_but_not_authenticated() -> None:
    # secret.md §6: the salt is kept for format compatibility and is not used by the cipher, so another
    # well-formed salt does not change the result. Malformed salts fail (test above).
    other = {**KNOWN_BLOB, "salt": _encode(b"\x01" * 32)}
    assert decrypt_with_key(KEY, other) == b"alknet"


def test_extra_fields_ignored() -> None:
    assert decrypt_with_key(KEY, {**KNOWN_BLOB, "note": "x", "version": 9}) == b"alknet"
    assert EncryptedData.from_dict({**KNOWN_BLOB, "note": "x"}).to_dict() == KNOWN_BLOB


@pytest.mark.parametrize("text", ["", "[]", "null", "{", '"x"', "1", json.dumps([KNOWN_BLOB]), "\xff"])
def test_from_json_garbage(text: str) -> None:
    with pytest.raises(DecryptionError) as info:
        EncryptedData.from_json(text)
    assert_generic(info)


@pytest.mark.parametrize("blob", [None, [], "x", 5, (1, 2)])
def test_non_mapping_blob(blob: object) -> None:
    with pytest.raises(DecryptionError) as info:
        decrypt_with_key(KEY, blob)  # type: ignore[arg-type]
    assert_generic(info)


def test_decrypt_with_key_version_3_still_uses_given_key() -> None:
    # decrypt_with_key uses the key it is given; choosing the key from key_version is the service's job
    blob = encrypt_with_key(KEY, b"v3", 3)
    assert blob.key_version == 3
    assert decrypt_with_key(KEY, blob) == b"v3"


@pytest.mark.parametrize("version", [1, 0, 2**31 + 2, True, "2", None])
def test_encrypt_rejects_bad_version(version: object) -> None:
    with pytest.raises(ValueError):
        encrypt_with_key(KEY, b"x", version)  # type: ignore[arg-type]


def test_encrypt_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encrypt_with_key(bytes(31), b"x", 2)
    with pytest.raises(ValueError):
        encrypt_with_key(KEY, "text", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encrypt_with_key(KEY, b"x", 2, aad="text")  # type: ignore[arg-type]


def test_key_check_value() -> None:
    assert key_check_value(KEY) == key_check_value(bytearray(KEY))
    assert len(key_check_value(KEY)) == 16
    assert AES_V2 not in key_check_value(KEY)
    assert key_check_value(KEY) != key_check_value(OTHER_KEY)
