"""Property tests (hypothesis): arbitrary unicode phrases, passphrases, paths, sites and blobs never crash,
and errors name counts or positions, never the input's words.

500 examples per property by default; the ``_slow`` twins run 20 000 (``pytest -m slow tests/secret``).
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from alknet.secret import (
    DecryptionError,
    EncryptedData,
    InvalidMnemonicError,
    InvalidPathError,
    decrypt_with_key,
    format_path,
    mnemonic_to_seed,
    normalize_mnemonic,
    parse_path,
    password_from_key,
    site_password_index,
    validate_mnemonic,
)
from alknet.secret.paths import (
    check_ed25519_path,
    check_encryption_path,
    check_ethereum_path,
    check_password_path,
)

from .known import ABANDON, AES_V2

FAST = settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SLOW = settings(FAST, max_examples=20_000)

ENGLISH = Mnemonic("english")
WORDLIST: list[str] = ENGLISH.wordlist
ANY_CHAR = st.characters(exclude_categories=())  # includes lone surrogates
ANY_TEXT = st.text(ANY_CHAR, max_size=200)
WHITESPACE = st.text(st.sampled_from(" \t\n\r\u3000\u00a0\u2003\x0b\x0c"), min_size=1, max_size=3)

MNEMONIC_ERRORS = re.compile(
    r"mnemonic must have 12, 15, 18, 21 or 24 words, got \d+"
    r"|word \d+ is not in the BIP39 English word list"
    r"|checksum mismatch"
)
PATH_ERRORS = re.compile(
    r"path must be a string|path is empty|path must start with 'm'|path must continue with '/' after 'm'"
    r"|path has more than 16 components"
    r"|path component \d+ (is empty|is not a decimal index optionally followed by ' or h|has a leading zero"
    r"|is out of range \(must be below 2\^31\))"
    r"|ed25519 derivation is hardened only: path component \d+ is normal"
    r"|ed25519 keys are derived only under m/74'/0'/ with at least 4 components"
    r"|path must be m/74'/1'/0'/\{i\}' for a password"
    r"|path must be m/74'/2'/0'/\{i\}' for an encryption key"
    r"|path must be m/44'/60'/\{a\}'/\{c\}/\{i\} with c 0 or 1 and c, i normal"
)
SITE_ERRORS = re.compile(
    r"site must be a non-empty string|site must be at most 1024 characters|site is not valid Unicode text"
)


def pair(check: Callable[..., None], *strategies: st.SearchStrategy[Any]) -> tuple[Any, Any]:
    """The same property as a 500-example test and a 20 000-example ``slow`` test."""
    fast = FAST(given(*strategies)(check))
    slow = pytest.mark.timeout(3600)(pytest.mark.slow(SLOW(given(*strategies)(check))))
    return fast, slow


# -- phrases -------------------------------------------------------------------------------------------------


@st.composite
def phrases(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.one_of(st.sampled_from(WORDLIST), ANY_TEXT), max_size=26))
    out = draw(st.one_of(st.just(""), WHITESPACE))
    for token in tokens:
        out += token + draw(WHITESPACE)
    return out


def check_phrase(phrase: str) -> None:
    try:
        normalized = validate_mnemonic(phrase)
    except InvalidMnemonicError as exc:
        assert MNEMONIC_ERRORS.fullmatch(str(exc)), str(exc)
    else:
        assert normalized == normalize_mnemonic(phrase)
        assert normalized.count(" ") + 1 in (12, 15, 18, 21, 24)


test_arbitrary_phrases, test_arbitrary_phrases_slow = pair(check_phrase, st.one_of(ANY_TEXT, phrases()))


SPACES = [" ", "\t", "\n", "\r", "\u3000", "\u00a0", "\u2003", "  "]


@st.composite
def valid_phrase_and_mangled(draw: st.DrawFn) -> tuple[str, str]:
    size = draw(st.sampled_from([16, 20, 24, 28, 32]))
    phrase = ENGLISH.to_mnemonic(draw(st.binary(min_size=size, max_size=size)))
    rnd = random.Random(draw(st.integers(min_value=0, max_value=2**64)))
    mangled = rnd.choice(["", *SPACES])
    for word in phrase.split(" "):
        mangled += "".join(c.upper() if rnd.random() < 0.5 else c for c in word) + rnd.choice(SPACES)
    return phrase, mangled


def check_mangled_phrase(pair_: tuple[str, str]) -> None:
    phrase, mangled = pair_
    assert validate_mnemonic(mangled) == phrase


test_case_and_space_mangling, test_case_and_space_mangling_slow = pair(
    check_mangled_phrase, valid_phrase_and_mangled()
)


@st.composite
def phrase_with_bad_word(draw: st.DrawFn) -> tuple[str, int, str]:
    words = ABANDON.split(" ")
    position = draw(st.integers(min_value=1, max_value=12))
    bad = draw(
        st.text(st.characters(exclude_categories=("Z", "Cc", "Cs")), min_size=1, max_size=12).filter(
            lambda t: (
                normalize_mnemonic(t) not in WORDLIST
                and " " not in normalize_mnemonic(t)
                and normalize_mnemonic(t) != ""
            )
        )
    )
    words[position - 1] = bad
    return " ".join(words), position, bad


def check_bad_word_position(case: tuple[str, int, str]) -> None:
    phrase, position, bad = case
    with pytest.raises(InvalidMnemonicError) as info:
        validate_mnemonic(phrase)
    assert str(info.value) == f"word {position} is not in the BIP39 English word list"
    if len(bad) >= 3:
        assert bad not in str(info.value)


test_bad_word_named_by_position, test_bad_word_named_by_position_slow = pair(
    check_bad_word_position, phrase_with_bad_word()
)


def check_passphrase(passphrase: str) -> None:
    try:
        seed = mnemonic_to_seed(ABANDON, passphrase)
    except ValueError as exc:
        assert str(exc) == "passphrase is not valid Unicode text"
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in passphrase)
    else:
        assert isinstance(seed, bytearray) and len(seed) == 64


test_arbitrary_passphrases, test_arbitrary_passphrases_slow = pair(check_passphrase, ANY_TEXT)


# -- paths and sites -----------------------------------------------------------------------------------------

COMPONENT = st.one_of(
    st.integers(min_value=0, max_value=2**31 - 1).map(str),
    st.integers(min_value=0, max_value=2**31 - 1).map(lambda i: f"{i}'"),
    st.integers(min_value=0, max_value=2**31 - 1).map(lambda i: f"{i}h"),
    st.sampled_from(["", "01", "1H", "-1", " 1", "2147483648", "99999999999999999999", "'", "h", "1''"]),
    st.text(ANY_CHAR, max_size=6),
)


@st.composite
def path_texts(draw: st.DrawFn) -> str:
    components = draw(st.lists(COMPONENT, max_size=18))
    prefix = draw(st.sampled_from(["m", "m", "m", "M", "", " m", "n"]))
    return prefix + "".join("/" + c for c in components)


def check_path(path: str) -> None:
    try:
        indices = parse_path(path)
    except InvalidPathError as exc:
        assert PATH_ERRORS.fullmatch(str(exc)), str(exc)
    else:
        assert len(indices) <= 16
        assert all(0 <= i < 2**32 for i in indices)
        assert parse_path(format_path(indices)) == indices
    for check in (check_ed25519_path, check_password_path, check_encryption_path, check_ethereum_path):
        try:
            canonical = check(path)
        except InvalidPathError as exc:
            assert PATH_ERRORS.fullmatch(str(exc)), str(exc)
        else:
            assert canonical == format_path(parse_path(path))


test_arbitrary_paths, test_arbitrary_paths_slow = pair(check_path, st.one_of(ANY_TEXT, path_texts()))


def check_site(site: str) -> None:
    try:
        index = site_password_index(site)
    except ValueError as exc:
        assert SITE_ERRORS.fullmatch(str(exc)), str(exc)
    else:
        assert 0 <= index < 2**31


test_arbitrary_sites, test_arbitrary_sites_slow = pair(check_site, st.text(ANY_CHAR, max_size=1100))


# -- passwords and blobs -------------------------------------------------------------------------------------

KEY = bytes.fromhex(AES_V2)


def check_password_length(length: int) -> None:
    try:
        password = password_from_key(KEY, length)
    except ValueError:
        assert not 8 <= length <= 1024
    else:
        assert len(password) == length
        assert all(33 <= ord(c) <= 126 for c in password)


test_password_lengths, test_password_lengths_slow = pair(
    check_password_length, st.integers(min_value=-10, max_value=1100)
)

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_TEXT, st.binary(max_size=40)
)
B64 = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())


@st.composite
def blobs(draw: st.DrawFn) -> object:
    base: dict[str, object] = {
        "key_version": draw(st.one_of(st.integers(min_value=-3, max_value=2**32), JSON_SCALARS)),
        "salt": draw(st.one_of(B64, JSON_SCALARS)),
        "iv": draw(st.one_of(B64, JSON_SCALARS)),
        "data": draw(st.one_of(B64, JSON_SCALARS)),
    }
    drop = draw(st.lists(st.sampled_from(sorted(base)), max_size=2))
    for name in drop:
        base.pop(name, None)
    return draw(st.one_of(st.just(base), JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)))


def check_blob(blob: object) -> None:
    try:
        decrypt_with_key(KEY, blob)  # type: ignore[arg-type]
    except DecryptionError as exc:
        assert str(exc) == "decryption failed"
    else:
        raise AssertionError("a random blob decrypted")


test_arbitrary_blobs, test_arbitrary_blobs_slow = pair(check_blob, blobs())


def check_blob_json(text: str) -> None:
    try:
        EncryptedData.from_json(text)
    except DecryptionError as exc:
        assert str(exc) == "decryption failed"


test_arbitrary_blob_json, test_arbitrary_blob_json_slow = pair(check_blob_json, ANY_TEXT)
