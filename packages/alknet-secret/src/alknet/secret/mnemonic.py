"""BIP39 mnemonics: generation, normalisation, validation and seeding (secret.md §2).

English word list only, through the ``mnemonic`` package. Error messages name a count or a word position,
never a word of the phrase.
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import lru_cache

from mnemonic import Mnemonic

from alknet.secret.errors import InvalidMnemonicError

__all__ = [
    "WORD_COUNTS",
    "generate_mnemonic",
    "mnemonic_to_seed",
    "normalize_mnemonic",
    "validate_mnemonic",
]

#: Accepted phrase lengths and their entropy in bits.
WORD_COUNTS: dict[int, int] = {12: 128, 15: 160, 18: 192, 21: 224, 24: 256}
_COUNTS_TEXT = "12, 15, 18, 21 or 24"


@lru_cache(maxsize=1)
def _english() -> Mnemonic:
    return Mnemonic("english")


@lru_cache(maxsize=1)
def _word_index() -> dict[str, int]:
    return {word: i for i, word in enumerate(_english().wordlist)}


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be one of {_COUNTS_TEXT}")
    return value


def generate_mnemonic(words: int = 24) -> str:
    """Return a fresh English BIP39 phrase of ``words`` words from OS randomness."""
    count = _check_int(words, "words")
    if count not in WORD_COUNTS:
        raise ValueError(f"words must be one of {_COUNTS_TEXT}, got {count}")
    return str(_english().generate(WORD_COUNTS[count]))


def normalize_mnemonic(phrase: str) -> str:
    """NFKD, strip, split on whitespace runs, lowercase each word, join with one ASCII space."""
    if not isinstance(phrase, str):
        raise TypeError("mnemonic must be a string")
    return " ".join(word.lower() for word in unicodedata.normalize("NFKD", phrase).split())


def validate_mnemonic(phrase: str) -> str:
    """Return the normalised phrase, or raise ``InvalidMnemonicError`` naming a count or a word position."""
    normalized = normalize_mnemonic(phrase)
    words = normalized.split(" ") if normalized else []
    if len(words) not in WORD_COUNTS:
        raise InvalidMnemonicError(f"mnemonic must have {_COUNTS_TEXT} words, got {len(words)}")
    index = _word_index()
    bits = 0
    for position, word in enumerate(words, start=1):
        value = index.get(word)
        if value is None:
            raise InvalidMnemonicError(f"word {position} is not in the BIP39 English word list")
        bits = (bits << 11) | value
    total = 11 * len(words)
    checksum_bits = total // 33
    entropy = (bits >> checksum_bits).to_bytes((total - checksum_bits) // 8, "big")
    expected = hashlib.sha256(entropy).digest()[0] >> (8 - checksum_bits)
    if bits & ((1 << checksum_bits) - 1) != expected:
        raise InvalidMnemonicError("checksum mismatch")
    return normalized


def mnemonic_to_seed(phrase: str, passphrase: str = "") -> bytearray:
    """Validate ``phrase`` and return its 64-byte BIP39 seed (PBKDF2-HMAC-SHA512, 2048 rounds).

    The passphrase is only NFKD-normalised (case and whitespace count). A passphrase that cannot be encoded
    as UTF-8 (a lone surrogate) is a ``ValueError``.
    """
    normalized = validate_mnemonic(phrase)
    if not isinstance(passphrase, str):
        raise TypeError("passphrase must be a string")
    try:
        unicodedata.normalize("NFKD", passphrase).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("passphrase is not valid Unicode text") from None
    return bytearray(Mnemonic.to_seed(normalized, passphrase))
