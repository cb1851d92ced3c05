"""Helpers shared by the CLI tests that read BIP39 words and passphrases (keygen, secret)."""

from __future__ import annotations

import getpass
import io
import itertools
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ALKNET_* state from the environment; HOME and the working directory inside ``tmp_path``."""
    for var in ("ALKNET_HOME", "ALKNET_CONFIG", "ALKNET_IDENTITY", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def needles(phrase: str) -> list[str]:
    """The whole phrase and every pair of neighbouring words: none may appear anywhere."""
    words = phrase.split()
    return [" ".join(words)] + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def assert_nothing_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, phrases: Iterable[str], passphrases: Iterable[str]
) -> None:
    """No file under ``tmp_path`` and no captured log record holds a phrase (or a pair of its words) or a
    passphrase."""
    found = [n for phrase in phrases for n in needles(phrase)] + list(passphrases)
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for needle in found:
                assert needle.encode() not in data, f"{needle!r} found in {path}"
    logged = "\n".join(
        caplog.handler.format(r) for when in ("setup", "call") for r in caplog.get_records(when)
    )
    for needle in found:
        assert needle not in logged


def feed(monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> io.BytesIO:
    """Replace stdin with a pipe-like stream (not a terminal) holding ``text``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    raw_stream = io.BytesIO(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw_stream, encoding="utf-8"))
    return raw_stream


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal(monkeypatch: pytest.MonkeyPatch, answers: list[str], data: str = "") -> list[str]:
    """Make stdin a terminal (holding ``data``) whose no-echo prompts return ``answers`` in order; returns the
    prompts asked."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    monkeypatch.setattr(sys, "stdin", FakeTerminal(data))
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    return prompts
