"""``alknet keygen --from-mnemonic`` / ``--new-mnemonic`` (cli.md §1, §5; secret.md §10).

In-process ``main()`` with a replaced ``sys.stdin`` (the words are never an argument); one real process proves
the stdin path of the console script end to end. After every test no file under the test's directory and no
captured log record holds any of the words or passphrases used.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_ssh_private_key,
)
from mnemonic_kit import assert_nothing_left, feed, isolate, terminal

from alknet.cli.commands import keygen as keygen_cmd
from alknet.cli.main import build_parser, main
from alknet.core.auth.keys import parse_public_key
from alknet.secret import derive_role_key, validate_mnemonic

ABANDON = "abandon " * 11 + "about"
BAD_CHECKSUM = "abandon " * 11 + "abandon"
KNOWN_LINE = (
    "fingerprint=SHA256:F0YtA4EZe6p9T0vW92Y8PsMvPsFJQ6lC4EhL6AGyLls "
    "endpoint_id=e78c2766a792f09bfccb51493968ac322283e8d021a30063784d806929762ecc path=k"
)
IDENTITY_PUB = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOeMJ2ankvCb/MtRSTlorDIig+jQIaMAY3hNgGkpdi7M alknet-identity\n"
)
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqd1cQZFfumzCK4dgJjq6RbBoyue+rR0GnHuO6wEYE0 alknet-host\n"
HOST_FP = "SHA256:kRW8mYgHXlVuFrP5ZqKwK/zYjL1XX5J+iGdi/RR0OH8"
IDENTITY_PRIVATE = "603aa5c626317fda4afd87b902e5c9de76c33f40834005245e1c5a675e92d700"
PASSPHRASES = ("TREZOR", " spaced  Passphrase ")
USAGE_HINT = "(see 'alknet keygen --help')"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def phrases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Phrases a test used (ABANDON always); none may be left in a file under tmp_path or in the logs."""
    caplog.set_level(logging.DEBUG)
    used = [ABANDON, BAD_CHECKSUM]
    yield used
    assert_nothing_left(tmp_path, caplog, used, [p.strip() for p in PASSPHRASES])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["keygen", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def private_hex(path: Path) -> str:
    key = load_ssh_private_key(path.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


# ------------------------------------------------------------------------------------------- known answers


def test_known_answer_line_and_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(monkeypatch, ABANDON + "\n")
    rc, out, err = run(capsys, "--from-mnemonic", "-o", "k")
    assert (rc, out, err) == (0, KNOWN_LINE + "\n", "")
    k, pub = Path("k"), Path("k.pub")
    assert pub.read_text() == IDENTITY_PUB
    assert stat.S_IMODE(k.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert k.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert private_hex(k) == IDENTITY_PRIVATE
    assert parse_public_key(pub.read_text()).comment == "alknet-identity"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_ssh_keygen_agrees(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    feed(monkeypatch, ABANDON + "\n")
    assert run(capsys, "--from-mnemonic", "--role", "host", "-o", "h")[0] == 0
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", "h"], capture_output=True, text=True, check=True
    ).stdout
    assert derived.split()[:2] == HOST_PUB.split()[:2]
    listed = subprocess.run(["ssh-keygen", "-lf", "h.pub"], capture_output=True, text=True, check=True).stdout
    assert listed.split()[1] == HOST_FP


def test_host_role_twice_is_byte_identical_and_passphrase_changes_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(monkeypatch, ABANDON + "\n")
    rc, out, _ = run(capsys, "--from-mnemonic", "--role", "host", "-o", "a")
    assert rc == 0 and out.startswith(f"fingerprint={HOST_FP} endpoint_id=6a9dd5c41915fba6")
    feed(
        monkeypatch,
        "  ABANDON abandon\tabandon abandon abandon abandon abandon abandon abandon abandon abandon ABOUT \r\n",
    )
    assert run(capsys, "--from-mnemonic", "--role", "host", "-o", "b")[0] == 0
    assert Path("a.pub").read_bytes() == Path("b.pub").read_bytes() == HOST_PUB.encode()
    assert private_hex(Path("a")) == private_hex(Path("b"))

    feed(monkeypatch, ABANDON + "\nTREZOR\n")
    rc, out, _ = run(capsys, "--from-mnemonic", "--role", "host", "--passphrase", "-o", "c")
    assert rc == 0 and HOST_FP not in out
    expected = derive_role_key(ABANDON, "TREZOR", role="host")
    assert private_hex(Path("c")) == expected.private_key.hex()
    assert Path("c.pub").read_text() != HOST_PUB

    # the passphrase is exact: surrounding spaces count, only the line terminator is removed
    feed(monkeypatch, ABANDON + "\r\n" + PASSPHRASES[1] + "\r\n")
    assert run(capsys, "--from-mnemonic", "--passphrase", "-o", "d")[0] == 0
    assert private_hex(Path("d")) == derive_role_key(ABANDON, PASSPHRASES[1]).private_key.hex()
    assert private_hex(Path("d")) != derive_role_key(ABANDON, PASSPHRASES[1].strip()).private_key.hex()


def test_device_role(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    feed(monkeypatch, ABANDON + "\n")
    rc, out, _ = run(capsys, "--state-dir", "s", "--from-mnemonic", "--role", "device", "--device", "2")
    assert rc == 0 and out.rstrip().endswith(f"path={tmp_path / 's' / 'id_ed25519'}")
    pub = parse_public_key((tmp_path / "s" / "id_ed25519.pub").read_text())
    expected = derive_role_key(ABANDON, role="device", device=2)
    assert pub.comment == "alknet-device-2" and pub.raw == expected.public_key
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700


def test_default_paths_in_state_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "state"))
    feed(monkeypatch, ABANDON + "\n")
    assert run(capsys, "--from-mnemonic", "--role", "host")[0] == 0
    feed(monkeypatch, ABANDON + "\n")
    assert run(capsys, "--from-mnemonic")[0] == 0
    assert (tmp_path / "state" / "host_key.pub").read_text() == HOST_PUB
    assert (tmp_path / "state" / "id_ed25519.pub").read_text() == IDENTITY_PUB


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from-mnemonic", "--role", "device"], "--role device needs --device N (N >= 1)"),
        (["--from-mnemonic", "--role", "device", "--device", "0"], "--device must be >= 1"),
        (["--new-mnemonic", "--role", "device", "--device", "-3"], "--device must be >= 1"),
        (["--role", "device", "--device", "1"], "--role device needs --from-mnemonic or --new-mnemonic"),
        (["--from-mnemonic", "--device", "1"], "--device is only valid with --role device"),
        (["--from-mnemonic", "--words", "12"], "--words needs --new-mnemonic"),
        (["--passphrase"], "--passphrase needs --from-mnemonic or --new-mnemonic"),
        (["--from-mnemonic", "--new-mnemonic"], "not allowed with argument"),
        (["--new-mnemonic", "--words", "13"], "invalid choice"),
        (["--from-mnemonic", "--role", "device", "--device", "x"], "invalid int value"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    stream = feed(monkeypatch, ABANDON + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = run(capsys, "--state-dir", "s", "-o", "k", *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("alknet: error: ") and message in err
    assert err.rstrip().endswith(USAGE_HINT)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no state dir
    assert stream.tell() == 0  # the words were not even read


@pytest.mark.parametrize(
    ("phrase", "message"),
    [
        (BAD_CHECKSUM, "checksum mismatch"),
        ("abandon abandn " + "abandon " * 9 + "about", "word 2 is not in the BIP39 English word list"),
        ("abandon " * 10 + "about", "mnemonic must have 12, 15, 18, 21 or 24 words, got 11"),
        ("", "mnemonic must have 12, 15, 18, 21 or 24 words, got 0"),
    ],
)
def test_invalid_words_exit_1_name_no_word_and_write_nothing(
    phrase: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    feed(monkeypatch, phrase + "\n")
    rc, out, err = run(capsys, "--state-dir", "s", "--from-mnemonic")
    assert (rc, out, err) == (1, "", f"alknet: error: {message}\n")
    for word in set(phrase.split()):
        assert word not in err
    assert not (tmp_path / "s").exists()  # not even the state directory
    feed(monkeypatch, phrase + "\n")
    assert run(capsys, "--from-mnemonic", "-o", "k")[0] == 1
    assert not Path("k").exists() and not Path("k.pub").exists()


def test_existing_files_refused_before_reading_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(monkeypatch, ABANDON + "\n")
    assert run(capsys, "--from-mnemonic", "-o", "k")[0] == 0
    before = (Path("k").read_bytes(), Path("k.pub").read_bytes())
    stream = feed(monkeypatch, ABANDON + "\n")
    rc, out, err = run(capsys, "--from-mnemonic", "-o", "k")
    assert (rc, out) == (1, "")
    assert err == "alknet: error: k already exists (use --force to overwrite)\n"
    assert stream.tell() == 0
    assert (Path("k").read_bytes(), Path("k.pub").read_bytes()) == before
    Path("j.pub").write_text("x\n")
    feed(monkeypatch, ABANDON + "\n")
    rc, _, err = run(capsys, "--new-mnemonic", "-o", "j")
    assert rc == 1 and "j.pub already exists" in err and not Path("j").exists()
    # --force: exit 0, the same derived key (new file bytes, same key inside)
    feed(monkeypatch, ABANDON + "\n")
    rc, out, _ = run(capsys, "--from-mnemonic", "-o", "k", "--force")
    assert (rc, out) == (0, KNOWN_LINE + "\n")
    assert Path("k.pub").read_bytes() == before[1] and private_hex(Path("k")) == IDENTITY_PRIVATE


def test_missing_stdin_lines_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(monkeypatch, "")
    rc, _, err = run(capsys, "--from-mnemonic", "-o", "k")
    assert (
        rc == 2
        and "no mnemonic words on stdin (expected on line 1)" in err
        and err.endswith(USAGE_HINT + "\n")
    )
    feed(monkeypatch, ABANDON + "\n")
    rc, _, err = run(capsys, "--from-mnemonic", "--passphrase", "-o", "k")
    assert rc == 2 and "no BIP39 passphrase (--passphrase) on stdin (expected on line 2)" in err
    feed(monkeypatch, b"\xff\xfe abandon\n")
    rc, _, err = run(capsys, "--from-mnemonic", "-o", "k")
    assert rc == 2 and "stdin line 1 (mnemonic words) is not valid UTF-8" in err
    assert not Path("k").exists()


def test_plain_text_stdin_without_byte_layer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(ABANDON + "\n"))
    assert run(capsys, "--from-mnemonic", "-o", "k") == (0, KNOWN_LINE + "\n", "")


# ---------------------------------------------------------------------------------------- --new-mnemonic


def test_new_mnemonic_prints_words_once_with_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phrases: list[str]
) -> None:
    feed(monkeypatch, "")
    rc, out, err = run(capsys, "--new-mnemonic", "-o", "k")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2
    words = lines[0]
    phrases.append(words)
    assert len(words.split()) == 24 and validate_mnemonic(words) == words
    assert err == f"alknet: warning: {keygen_cmd.NEW_MNEMONIC_WARNING}\n" and words not in err
    assert "write these words down" in err and "not store them" in err
    expected = derive_role_key(words)
    assert private_hex(Path("k")) == expected.private_key.hex()
    assert lines[1].startswith("fingerprint=SHA256:") and lines[1].endswith(" path=k")
    assert out.count(words) == 1

    feed(monkeypatch, "")
    rc, out, _ = run(capsys, "--new-mnemonic", "--words", "12", "--role", "host", "-o", "h")
    words12 = out.splitlines()[0]
    phrases.append(words12)
    assert rc == 0 and len(words12.split()) == 12 and words12 != words
    assert private_hex(Path("h")) == derive_role_key(words12, role="host").private_key.hex()
    assert parse_public_key(Path("h.pub").read_text()).comment == "alknet-host"


def test_new_mnemonic_passphrase_from_stdin_line_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phrases: list[str]
) -> None:
    feed(monkeypatch, "TREZOR\n")
    rc, out, _ = run(
        capsys,
        "--new-mnemonic",
        "--words",
        "15",
        "--passphrase",
        "--role",
        "device",
        "--device",
        "7",
        "-o",
        "k",
    )
    words = out.splitlines()[0]
    phrases.append(words)
    assert rc == 0 and len(words.split()) == 15
    expected = derive_role_key(words, "TREZOR", role="device", device=7)
    assert private_hex(Path("k")) == expected.private_key.hex()
    assert Path("k.pub").read_text().rstrip().endswith(" alknet-device-7")


# -------------------------------------------------------------------------------------------- terminal


def test_terminal_prompts_without_echo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = terminal(monkeypatch, [ABANDON, "TREZOR"])
    rc, out, err = run(capsys, "--from-mnemonic", "--passphrase", "-o", "k")
    assert rc == 0 and prompts == ["mnemonic words: ", "BIP39 passphrase: "]
    assert private_hex(Path("k")) == derive_role_key(ABANDON, "TREZOR").private_key.hex()
    assert "abandon" not in out + err and "TREZOR" not in out + err

    prompts = terminal(monkeypatch, [ABANDON])
    assert run(capsys, "--from-mnemonic", "-o", "k2") == (
        0,
        KNOWN_LINE.replace("path=k", "path=k2") + "\n",
        "",
    )
    assert prompts == ["mnemonic words: "]


def test_terminal_new_mnemonic_asks_passphrase_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phrases: list[str]
) -> None:
    prompts = terminal(monkeypatch, ["TREZOR", "TREZOR"])
    rc, out, _ = run(capsys, "--new-mnemonic", "--passphrase", "-o", "k")
    phrases.append(out.splitlines()[0])
    assert rc == 0 and prompts == ["BIP39 passphrase: ", "repeat the BIP39 passphrase: "]
    assert private_hex(Path("k")) == derive_role_key(out.splitlines()[0], "TREZOR").private_key.hex()

    terminal(monkeypatch, ["TREZOR", "TREZOr"])
    rc, out, err = run(capsys, "--new-mnemonic", "--passphrase", "-o", "j")
    assert (rc, out, err) == (1, "", "alknet: error: the two passphrases do not match\n")
    assert not Path("j").exists()


def test_terminal_end_of_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    terminal(monkeypatch, [])
    assert run(capsys, "--from-mnemonic", "-o", "k") == (1, "", "alknet: error: no mnemonic words entered\n")
    assert not Path("k").exists()


# ---------------------------------------------------------------------------------- no flag takes words


def test_no_flag_or_variable_carries_the_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    keygen_parser = sub.choices["keygen"]  # type: ignore[index]
    for action in keygen_parser._actions:
        if any("mnemonic" in s or "passphrase" in s for s in action.option_strings):
            assert action.nargs == 0, action.option_strings  # switches only, never a value
    # a variable holding words is ignored: the words still come from stdin (here: none -> exit 2)
    monkeypatch.setenv("ALKNET_MNEMONIC", ABANDON)
    monkeypatch.setenv("ALKNET_PASSPHRASE", "TREZOR")
    feed(monkeypatch, "")
    rc, _, err = run(capsys, "--from-mnemonic", "-o", "k")
    assert rc == 2 and "no mnemonic words on stdin" in err


# ------------------------------------------------------------------------------------------ real process


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("alknet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "alknet.cli"]


def test_console_script_reads_words_from_stdin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    proc = subprocess.run(
        [*_console_script(), "keygen", "--from-mnemonic", "-o", "k"],
        input=ABANDON + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, KNOWN_LINE + "\n", "")
    assert (tmp_path / "k.pub").read_text() == IDENTITY_PUB
    proc = subprocess.run(
        [*_console_script(), "keygen", "--from-mnemonic", "-o", "bad"],
        input=BAD_CHECKSUM + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "alknet: error: checksum mismatch\n")
    assert not (tmp_path / "bad").exists()


def test_help_says_where_the_words_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--from-mnemonic" in out and "--new-mnemonic" in out and "stdin" in out and "without" in out
