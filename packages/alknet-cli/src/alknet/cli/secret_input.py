"""Reading mnemonic words and the BIP39 passphrase (cli.md §1).

Secrets never come from flag values or environment variables. When stdin is a terminal they are read with a
no-echo prompt (``getpass``, which talks to the controlling terminal); otherwise one line each from stdin:
line 1 the words, line 2 the BIP39 passphrase when ``--passphrase`` is given. Commands whose data also comes
from stdin (``secret encrypt|decrypt|rotate`` without ``--in PATH``) read those lines first and take the rest
of stdin as the data (:func:`read_stdin_rest`).

The words line is normalised by the library (case and whitespace do not matter). The passphrase line keeps
every character except the line terminator (``\\n`` or ``\\r\\n``): case and spaces are part of it. Nothing read
here is ever echoed, logged or put into an error message.
"""

from __future__ import annotations

import getpass
import sys
from typing import BinaryIO, cast

from alknet.cli.errors import CliError, UsageError

__all__ = [
    "PROMPT_PASSPHRASE",
    "PROMPT_REPEAT",
    "PROMPT_WORDS",
    "read_mnemonic",
    "read_new_passphrase",
    "read_stdin_rest",
    "stdin_is_terminal",
]

PROMPT_WORDS = "mnemonic words: "
PROMPT_PASSPHRASE = "BIP39 passphrase: "
PROMPT_REPEAT = "repeat the BIP39 passphrase: "


def stdin_is_terminal() -> bool:
    """Whether secrets are prompted for (stdin is a terminal) rather than read as stdin lines."""
    try:
        return bool(sys.stdin.isatty())
    except (AttributeError, ValueError):  # no stdin, or a closed one
        return False


def _binary_stdin() -> BinaryIO | None:
    """The byte layer under ``sys.stdin`` (absent when a test replaces stdin with a ``StringIO``)."""
    return cast("BinaryIO | None", getattr(sys.stdin, "buffer", None))


def _read_line(number: int, what: str, prog: str) -> str:
    """Line ``number`` of stdin without its terminator; EOF or invalid UTF-8 is a usage error (exit 2)."""
    if sys.stdin is None:
        raise UsageError(f"no {what} on stdin (expected on line {number})", prog)
    buffer = _binary_stdin()
    if buffer is not None:
        raw = buffer.readline()
        if not raw:
            raise UsageError(f"no {what} on stdin (expected on line {number})", prog)
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"stdin line {number} ({what}) is not valid UTF-8", prog) from None
    text = sys.stdin.readline()
    if not text:
        raise UsageError(f"no {what} on stdin (expected on line {number})", prog)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def _prompt(prompt: str, what: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise CliError(f"no {what} entered") from None


def read_mnemonic(*, passphrase: bool, prog: str) -> tuple[str, str]:
    """The words and the BIP39 passphrase (``""`` unless ``passphrase``), from the terminal or stdin."""
    if stdin_is_terminal():
        words = _prompt(PROMPT_WORDS, "mnemonic words")
        secret = _prompt(PROMPT_PASSPHRASE, "passphrase") if passphrase else ""
        return words, secret
    words = _read_line(1, "mnemonic words", prog)
    secret = _read_line(2, "BIP39 passphrase (--passphrase)", prog) if passphrase else ""
    return words, secret


def read_new_passphrase(*, prog: str) -> str:
    """The BIP39 passphrase for freshly generated words (there are no words to read).

    On a terminal it is asked twice and the two entries must match (a typo would silently give other
    keys); otherwise it is stdin line 1.
    """
    if stdin_is_terminal():
        first = _prompt(PROMPT_PASSPHRASE, "passphrase")
        second = _prompt(PROMPT_REPEAT, "passphrase")
        if first != second:
            raise CliError("the two passphrases do not match")
        return first
    return _read_line(1, "BIP39 passphrase (--passphrase)", prog)


def read_stdin_rest() -> bytes:
    """Everything left on stdin after the secret lines, as bytes."""
    if sys.stdin is None:
        return b""
    buffer = _binary_stdin()
    if buffer is not None:
        return buffer.read()
    return sys.stdin.read().encode("utf-8")
