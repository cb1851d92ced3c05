"""Shared helpers for the config tests: key lines, a TOML writer and a logfmt capture."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from alknet.core.auth.keys import generate_private_key, public_key_of
from alknet.core.logfmt import LogfmtFormatter


def key_line(comment: str = "k", options: str = "") -> str:
    """A fresh ``ssh-ed25519 ...`` line (with optional options prefix)."""
    line = public_key_of(generate_private_key(), comment).line
    return f"{options} {line}" if options else line


@pytest.fixture(name="key_line")
def key_line_fixture():  # type: ignore[no-untyped-def]
    return key_line


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """write(name, text) -> Path under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logger = logging.getLogger(f"alknet.test.config.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(LogfmtFormatter(with_time=False))
        self.logger.addHandler(handler)

    @property
    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    yield LogCapture()
