"""cli.md §1 conventions: one-line errors, exit codes, --version everywhere, in-process main()."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from alknet.cli import main as cli_main
from alknet.cli.main import main

VERSION_RE = re.compile(
    r"^alknet-cli 0\.1\.0 \(alknet-core 0\.1\.0, alknet-secret 0\.1\.0, alknet-storage 0\.1\.0, "
    r"alknet-flowgraph 0\.1\.0; extras: [a-z, ]+\)$"
)


def test_version_line_names_all_five_distributions_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert VERSION_RE.match(out.strip()), out
    # the dev group installs alknet-cli[all], so every extra is present
    assert out.strip().endswith("extras: quic, iroh, acme)")


def test_subcommand_version_is_the_same_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    top = capsys.readouterr().out
    assert main(["keygen", "--version"]) == 0
    assert capsys.readouterr().out == top


def test_console_script_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "alknet.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert VERSION_RE.match(proc.stdout.strip())


def test_unknown_flag_is_one_line_with_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--bogus"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0] == "alknet: error: unrecognised argument --bogus (see 'alknet keygen --help')"


def test_bad_choice_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--role", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("alknet: error: ")
    assert err[0].endswith("(see 'alknet keygen --help')")
    assert "usage:" not in err[0]


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("alknet: error: ") and err[0].endswith("(see 'alknet --help')")


def test_help_exits_zero_and_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("keygen", "token", "policy"):
        assert name in out


def test_global_flags_before_or_after_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    assert main(["--state-dir", str(a), "keygen"]) == 0
    assert main(["keygen", "--state-dir", str(b)]) == 0
    assert (a / "id_ed25519").is_file() and (b / "id_ed25519").is_file()


def test_internal_error_is_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def boom(*_a: object, **_k: object) -> int:
        raise RuntimeError("forced internal error")

    monkeypatch.setattr("alknet.cli.commands.keygen.run", boom)
    # the parser captured the old function at build time; rebuild through main
    monkeypatch.setattr(cli_main, "build_parser", _parser_with(boom))
    assert main(["keygen", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "forced internal error" in err
    assert main(["keygen", "--state-dir", str(tmp_path), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("alknet: error:")


def _parser_with(func: object) -> object:
    original = cli_main.build_parser

    def build() -> object:
        parser = original()
        for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
            for choice in action.choices.values():  # type: ignore[union-attr]
                if choice.prog.endswith(" keygen"):
                    choice.set_defaults(_run=func)
        return parser

    return build
