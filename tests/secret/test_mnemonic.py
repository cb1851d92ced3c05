"""BIP39 normalisation, validation and error rules (secret.md §2)."""

from __future__ import annotations

import pytest

from alknet.secret import (
    InvalidMnemonicError,
    generate_mnemonic,
    mnemonic_to_seed,
    normalize_mnemonic,
    validate_mnemonic,
)

from .known import ABANDON, SEED_EMPTY


def test_case_and_whitespace_are_normalised() -> None:
    messy = "  ABANDON abandon\tabandon \n abandon  Abandon abandon abandon abandon abandon abandon abandon"
    messy += " ABOUT "
    assert normalize_mnemonic(messy) == ABANDON
    assert validate_mnemonic(messy) == ABANDON
    assert mnemonic_to_seed(messy).hex() == SEED_EMPTY


def test_unicode_whitespace_and_nfkd() -> None:
    phrase = "\u3000".join(ABANDON.split(" "))  # ideographic space is whitespace
    assert normalize_mnemonic(phrase) == ABANDON
    # fullwidth letters fold to ASCII under NFKD
    assert normalize_mnemonic("\uff41\uff42\uff41\uff4e\uff44\uff4f\uff4e") == "abandon"


def test_passphrase_is_nfkd_but_case_and_space_sensitive() -> None:
    assert mnemonic_to_seed(ABANDON, "\u00e9") == mnemonic_to_seed(ABANDON, "e\u0301")
    assert mnemonic_to_seed(ABANDON, "TREZOR") != mnemonic_to_seed(ABANDON, "trezor")
    assert mnemonic_to_seed(ABANDON, " TREZOR") != mnemonic_to_seed(ABANDON, "TREZOR")


def test_seed_is_64_byte_bytearray() -> None:
    seed = mnemonic_to_seed(ABANDON)
    assert isinstance(seed, bytearray)
    assert len(seed) == 64


def test_checksum_mismatch_names_no_word() -> None:
    with pytest.raises(InvalidMnemonicError) as info:
        validate_mnemonic("abandon " * 11 + "abandon")
    assert str(info.value) == "checksum mismatch"
    assert "abandon" not in str(info.value)


@pytest.mark.parametrize("count", [0, 1, 11, 13, 25])
def test_wrong_word_count_names_the_count(count: int) -> None:
    with pytest.raises(InvalidMnemonicError) as info:
        validate_mnemonic(" ".join(["abandon"] * count))
    assert f"got {count}" in str(info.value)
    assert "abandon" not in str(info.value)


def test_unknown_word_names_position_only() -> None:
    phrase = "abandon abandn " + "abandon " * 9 + "about"
    with pytest.raises(InvalidMnemonicError) as info:
        validate_mnemonic(phrase)
    assert "word 2" in str(info.value)
    assert "abandn" not in str(info.value)
    assert str(info.value) == "word 2 is not in the BIP39 English word list"


def test_first_unknown_word_is_reported() -> None:
    words = ABANDON.split(" ")
    words[4] = "xylophonez"
    words[7] = "qq"
    with pytest.raises(InvalidMnemonicError, match=r"^word 5 is not"):
        validate_mnemonic(" ".join(words))


def test_non_english_word_refused() -> None:
    words = ABANDON.split(" ")
    words[0] = "ábaco"  # Spanish list word
    with pytest.raises(InvalidMnemonicError, match="word 1"):
        validate_mnemonic(" ".join(words))


@pytest.mark.parametrize("words", [12, 15, 18, 21, 24])
def test_generate_valid_phrases(words: int) -> None:
    phrase = generate_mnemonic(words)
    assert len(phrase.split(" ")) == words
    assert validate_mnemonic(phrase) == phrase


def test_generate_default_and_randomness() -> None:
    assert len(generate_mnemonic().split(" ")) == 24
    assert generate_mnemonic(12) != generate_mnemonic(12)


@pytest.mark.parametrize("words", [0, 11, 13, 25, True, 12.0, "12"])
def test_generate_bad_count(words: object) -> None:
    with pytest.raises(ValueError):
        generate_mnemonic(words)  # type: ignore[arg-type]


def test_lone_surrogate_passphrase_is_value_error() -> None:
    with pytest.raises(ValueError, match="passphrase is not valid Unicode text"):
        mnemonic_to_seed(ABANDON, "\ud800")


def test_non_string_inputs() -> None:
    with pytest.raises(TypeError):
        normalize_mnemonic(b"abandon")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mnemonic_to_seed(ABANDON, b"x")  # type: ignore[arg-type]
