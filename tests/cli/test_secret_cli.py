"""``alknet secret mnemonic new|derive|encrypt|decrypt|rotate`` (cli.md §11, secret.md §5-§6).

In-process ``main()`` with a replaced ``sys.stdin``; real processes for the ``encrypt | decrypt`` pipe. After
every test no file under the test's directory and no captured log record holds any of the words or
passphrases used.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mnemonic import Mnemonic
from mnemonic_kit import assert_nothing_left, feed, isolate, terminal

from alknet.cli.commands import secret as secret_cmd
from alknet.cli.main import main
from alknet.secret import (
    EncryptedData,
    decrypt_with_key,
    derive_role_key,
    generate_mnemonic,
    key_check_value,
    validate_mnemonic,
)

ABANDON = "abandon " * 11 + "about"
BAD_CHECKSUM = "abandon " * 11 + "abandon"
OTHER = "legal winner thank year wave sausage worth useful legal winner thank yellow"  # BIP39 vector 2
IDENTITY_LINE = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOeMJ2ankvCb/MtRSTlorDIig+jQIaMAY3hNgGkpdi7M alknet-identity"
)
IDENTITY_FP = "SHA256:F0YtA4EZe6p9T0vW92Y8PsMvPsFJQ6lC4EhL6AGyLls"
IDENTITY_EID = "e78c2766a792f09bfccb51493968ac322283e8d021a30063784d806929762ecc"
PASSWORD = "q\\t|1NH)m*<)*@$?rA-2cZm}|>N\\*;'C"  # secret.md §5, abandon words, site example.com
V2_KEY = "fbed5fa9110df4214baa259a4cd6bd3902373231472d317b8f3686b1d63df17a"
V3_KEY = "3ddaf7a4485d755c959c883347420fdc9fa2a64fb1edae8a5f312e82c210f0f0"
ETH_PRIVATE = "1ab42cc412b618bdea3a599e3c9bae199ebf030895b039e9db1e30dafb12b727"
ETH_PUBLIC = "0237b0bb7a8288d38ed49a524b5dc98cff3eb5ca824c9f9dc0dfdb3d9cd600f299"
KNOWN_BLOB = (
    '{"key_version":2,"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","iv":"AAAAAAAAAAAAAAAA",'
    '"data":"m/h97nNfuhWtDnf2aVtjpzLBp5ChBA=="}'
)
PASSPHRASES = ("TREZOR", "Zebra Crossing 25")
FAILED = "alknet: error: decryption failed\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def phrases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Phrases a test used; none may be left in a file under tmp_path or in the captured logs."""
    caplog.set_level(logging.DEBUG)
    used = [ABANDON, BAD_CHECKSUM, OTHER]
    yield used
    assert_nothing_left(tmp_path, caplog, used, PASSPHRASES)


def secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str | bytes, *argv: str
) -> tuple[int, str, str]:
    feed(monkeypatch, stdin)
    rc = main(["secret", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def encrypt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plaintext: str, *argv: str
) -> dict[str, object]:
    rc, out, err = secret(monkeypatch, capsys, f"{ABANDON}\n{plaintext}", "encrypt", *argv)
    assert (rc, err) == (0, ""), err
    assert out.endswith("\n") and out.count("\n") == 1
    blob: dict[str, object] = json.loads(out)
    return blob


# --------------------------------------------------------------------------------------- mnemonic new


def test_mnemonic_new(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], phrases: list[str]
) -> None:
    english = set(Mnemonic("english").wordlist)
    rc, out, err = secret(monkeypatch, capsys, "", "mnemonic", "new", "--words", "12")
    first = out.strip()
    phrases.append(first)
    assert rc == 0 and out.count("\n") == 1
    assert len(first.split()) == 12 and set(first.split()) <= english and validate_mnemonic(first) == first
    assert err == f"alknet: warning: {secret_cmd.MNEMONIC_WARNING}\n" and "not stored anywhere" in err
    _, out, _ = secret(monkeypatch, capsys, "", "mnemonic", "new", "--words", "12")
    phrases.append(out.strip())
    assert out.strip() != first
    rc, out, _ = secret(monkeypatch, capsys, "", "mnemonic", "new")
    phrases.append(out.strip())
    assert rc == 0 and len(out.split()) == 24 and validate_mnemonic(out.strip())
    rc, out, err = secret(monkeypatch, capsys, "", "mnemonic", "new", "--words", "13")
    assert rc == 2 and out == "" and err.endswith("(see 'alknet secret mnemonic new --help')\n")


def test_missing_subcommands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert secret(monkeypatch, capsys, "")[0:2] == (2, "")
    rc, _, err = secret(monkeypatch, capsys, "", "mnemonic")
    assert rc == 2 and err == "alknet: error: missing subcommand (see 'alknet secret mnemonic --help')\n"


# --------------------------------------------------------------------------------------------- derive


def test_derive_identity_equals_keygen_public_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for role, extra in (("identity", ()), ("host", ()), ("device", ("--device", "3"))):
        rc, out, err = secret(monkeypatch, capsys, ABANDON + "\n", "derive", "--purpose", role, *extra)
        assert rc == 0
        feed(monkeypatch, ABANDON + "\n")
        argv = ["keygen", "--from-mnemonic", "--role", role, *extra, "-o", f"k-{role}"]
        assert main(argv) == 0
        keygen_out = capsys.readouterr().out
        assert out == Path(f"k-{role}.pub").read_text()
        fingerprint, endpoint = keygen_out.split()[:2]
        assert err == f"{fingerprint} {endpoint}\n"
    rc, out, err = secret(monkeypatch, capsys, ABANDON + "\n", "derive", "--purpose", "identity")
    assert (rc, out, err) == (
        0,
        IDENTITY_LINE + "\n",
        f"fingerprint={IDENTITY_FP} endpoint_id={IDENTITY_EID}\n",
    )


def test_derive_with_passphrase_and_private(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = secret(
        monkeypatch,
        capsys,
        ABANDON + "\nTREZOR\n",
        "derive",
        "--purpose",
        "identity",
        "--passphrase",
        "--private",
    )
    key = derive_role_key(ABANDON, "TREZOR")
    line, private = out.splitlines()
    assert rc == 0 and private == key.private_key.hex() and line.endswith(" alknet-identity")
    assert IDENTITY_LINE not in out


def test_derive_explicit_paths(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = secret(monkeypatch, capsys, ABANDON + "\n", "derive", "--path", "m/74h/0h/0h/0h")
    assert (rc, out) == (0, IDENTITY_LINE.rsplit(" ", 1)[0] + "\n")
    rc, out, err = secret(
        monkeypatch,
        capsys,
        ABANDON + "\n",
        "derive",
        "--path",
        "m/44'/60'/0'/0/0",
        "--curve",
        "secp256k1",
        "--private",
    )
    assert (rc, out, err) == (0, f"{ETH_PUBLIC}\n{ETH_PRIVATE}\n", "")


def test_site_password_known_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(PASSWORD) == 32
    rc, out, err = secret(
        monkeypatch, capsys, ABANDON + "\n", "derive", "--purpose", "password", "--site", "example.com"
    )
    assert (rc, out, err) == (0, PASSWORD + "\n", "")
    assert all(33 <= ord(c) <= 126 for c in out.rstrip("\n"))
    rc, out, _ = secret(
        monkeypatch,
        capsys,
        ABANDON + "\n",
        "derive",
        "--purpose",
        "password",
        "--site",
        "example.com",
        "--length",
        "16",
    )
    assert (rc, out) == (0, PASSWORD[:16] + "\n")
    rc, out, _ = secret(
        monkeypatch,
        capsys,
        ABANDON + "\n",
        "derive",
        "--purpose",
        "password",
        "--site",
        "example.com",
        "--length",
        "1024",
    )
    assert rc == 0 and len(out) == 1025 and out.startswith(PASSWORD)


def test_encryption_key_check_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = secret(monkeypatch, capsys, ABANDON + "\n", "derive", "--purpose", "encryption")
    assert (rc, out) == (0, f"key_version=2 check={key_check_value(bytes.fromhex(V2_KEY))}\n")
    rc, out, _ = secret(
        monkeypatch,
        capsys,
        ABANDON + "\n",
        "derive",
        "--purpose",
        "encryption",
        "--key-version",
        "3",
        "--private",
    )
    assert (rc, out) == (0, f"key_version=3 check={key_check_value(bytes.fromhex(V3_KEY))}\n{V3_KEY}\n")
    assert V2_KEY not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --purpose --path is required"),
        (["--purpose", "identity", "--path", "m/74'/0'/0'/0'"], "not allowed with argument"),
        (["--purpose", "password"], "--purpose password needs --site S"),
        (["--purpose", "password", "--site", "a", "--length", "7"], "--length must be in 8 .. 1024, got 7"),
        (
            ["--purpose", "password", "--site", "a", "--length", "1025"],
            "--length must be in 8 .. 1024, got 1025",
        ),
        (["--purpose", "password", "--site", ""], "--site: site must be a non-empty string"),
        (["--purpose", "identity", "--site", "a"], "only valid with --purpose password"),
        (["--purpose", "device"], "--purpose device needs --device N"),
        (["--purpose", "device", "--device", "0"], "--device must be in 1 .."),
        (["--purpose", "host", "--device", "1"], "--device is only valid with --purpose device"),
        (["--purpose", "encryption", "--key-version", "1"], "--key-version must be in 2 .."),
        (["--purpose", "identity", "--key-version", "3"], "only valid with --purpose encryption"),
        (["--purpose", "identity", "--curve", "ed25519"], "--curve is only valid with --path"),
        (["--path", "m/74'/0'/0'/0"], "hardened only"),
        (["--path", "m/74'/1'/0'/0'"], "--path: ed25519 keys are derived only under m/74'/0'/"),
        (["--path", "m/74'/0'/0'/0'", "--curve", "secp256k1"], "--path:"),
        (["--path", "m/01'"], "--path:"),
    ],
)
def test_derive_usage_errors(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = feed(monkeypatch, ABANDON + "\n")
    rc = main(["secret", "derive", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
    assert err.endswith("(see 'alknet secret derive --help')\n")
    assert stream.tell() == 0  # rejected before any secret was read


@pytest.mark.parametrize(
    "argv",
    [
        ["derive", "--purpose", "identity"],
        ["derive", "--purpose", "password", "--site", "example.com"],
        ["encrypt"],
        ["decrypt"],
        ["rotate"],
    ],
)
def test_wrong_checksum_exit_1_without_echo(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = secret(monkeypatch, capsys, BAD_CHECKSUM + "\n" + KNOWN_BLOB + "\n", *argv)
    assert (rc, out, err) == (1, "", "alknet: error: checksum mismatch\n")
    assert "abandon" not in err


def test_unknown_word_named_by_position(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = secret(
        monkeypatch,
        capsys,
        "abandon abandon zzyzx" + " abandon" * 8 + " about\n",
        "derive",
        "--purpose",
        "host",
    )
    assert (rc, out, err) == (1, "", "alknet: error: word 3 is not in the BIP39 English word list\n")


# ----------------------------------------------------------------------------------- encrypt / decrypt


def test_encrypt_decrypt_round_trip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = encrypt(monkeypatch, capsys, "hi\n")
    assert list(blob) == ["key_version", "salt", "iv", "data"] and blob["key_version"] == 2
    assert len(base64.b64decode(str(blob["iv"]), validate=True)) == 12
    assert len(base64.b64decode(str(blob["salt"]), validate=True)) == 32
    assert len(base64.b64decode(str(blob["data"]), validate=True)) == 3 + 16
    assert decrypt_with_key(bytes.fromhex(V2_KEY), EncryptedData.from_dict(blob)) == b"hi\n"
    rc, out, err = secret(monkeypatch, capsys, f"{ABANDON}\n{json.dumps(blob)}\n", "decrypt")
    assert (rc, out, err) == (0, "hi\n", "")
    again = encrypt(monkeypatch, capsys, "hi\n")
    assert all(again[f] != blob[f] for f in ("salt", "iv", "data"))


def test_known_blob_decrypts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert secret(monkeypatch, capsys, f"{ABANDON}\n{KNOWN_BLOB}", "decrypt") == (0, "alknet", "")


def _flip(text: str) -> str:
    return ("B" if text[0] == "A" else "A") + text[1:]


def test_tampering_wrong_aad_and_wrong_words_fail_generically(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blob = encrypt(monkeypatch, capsys, "secret data", "--aad", "row-1")
    good = json.dumps(blob)
    rc, out, _ = secret(monkeypatch, capsys, f"{ABANDON}\n{good}", "decrypt", "--aad", "row-1")
    assert (rc, out) == (0, "secret data")
    cases = [
        (ABANDON, {**blob, "data": _flip(str(blob["data"]))}, ["--aad", "row-1"]),
        (ABANDON, {**blob, "iv": _flip(str(blob["iv"]))}, ["--aad", "row-1"]),
        (ABANDON, blob, ["--aad", "row-2"]),
        (ABANDON, blob, []),
        (ABANDON, {**blob, "key_version": 3}, ["--aad", "row-1"]),
        (ABANDON, {**blob, "key_version": 1}, ["--aad", "row-1"]),
        (ABANDON, {**blob, "key_version": "2"}, ["--aad", "row-1"]),
        (ABANDON, {**blob, "data": "@@@"}, ["--aad", "row-1"]),
        (ABANDON, {k: v for k, v in blob.items() if k != "salt"}, ["--aad", "row-1"]),
        (OTHER, blob, ["--aad", "row-1"]),
    ]
    for i, (words, variant, extra) in enumerate(cases):
        out_path = tmp_path / f"plain{i}"
        rc, out, err = secret(
            monkeypatch, capsys, f"{words}\n{json.dumps(variant)}", "decrypt", "--out", str(out_path), *extra
        )
        assert (rc, out, err) == (1, "", FAILED), (i, err)
        assert not out_path.exists()
    # a wrong passphrase, and input that is not a blob at all
    for stdin, extra in (
        (f"{ABANDON}\nTREZOR\n{good}", ["--passphrase"]),
        (f"{ABANDON}\nnot json", []),
        (f"{ABANDON}\n", []),
    ):
        rc, out, err = secret(monkeypatch, capsys, stdin, "decrypt", "--aad", "row-1", *extra)
        assert (rc, out, err) == (1, "", FAILED)
    assert "secret data" not in capsys.readouterr().err


def test_rotate_to_version_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blob = encrypt(monkeypatch, capsys, "rotate me", "--aad", "a")
    rc, out, err = secret(
        monkeypatch, capsys, f"{ABANDON}\n{json.dumps(blob)}", "rotate", "--to-version", "3", "--aad", "a"
    )
    assert (rc, err) == (0, "")
    new = EncryptedData.from_json(out)
    assert new.key_version == 3 and new.iv != blob["iv"]
    assert decrypt_with_key(bytes.fromhex(V3_KEY), new, b"a") == b"rotate me"
    rc, out, _ = secret(monkeypatch, capsys, f"{ABANDON}\n{new.to_json()}", "decrypt", "--aad", "a")
    assert (rc, out) == (0, "rotate me")
    # default target is the current version (2); a wrong AAD fails generically and writes nothing
    rc, out, _ = secret(monkeypatch, capsys, f"{ABANDON}\n{new.to_json()}", "rotate", "--aad", "a")
    assert rc == 0 and EncryptedData.from_json(out).key_version == 2
    rc, out, err = secret(monkeypatch, capsys, f"{ABANDON}\n{new.to_json()}", "rotate", "--out", "r.json")
    assert (rc, out, err) == (1, "", FAILED) and not Path("r.json").exists()
    rc, _, err = secret(monkeypatch, capsys, f"{ABANDON}\n{new.to_json()}", "rotate", "--to-version", "1")
    assert rc == 2 and "--to-version must be in 2 .." in err


def test_files_in_and_out(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    payload = bytes(range(256)) * 3
    Path("data.bin").write_bytes(payload)
    rc, out, err = secret(
        monkeypatch,
        capsys,
        ABANDON + "\n",
        "encrypt",
        "--in",
        "data.bin",
        "--out",
        "blob.json",
        "--key-version",
        "5",
    )
    assert (rc, out, err) == (0, "", "")
    assert stat.S_IMODE(Path("blob.json").stat().st_mode) == 0o600
    assert EncryptedData.from_json(Path("blob.json").read_bytes()).key_version == 5
    before = Path("blob.json").read_bytes()
    stream = feed(monkeypatch, ABANDON + "\n")
    rc = main(["secret", "encrypt", "--in", "data.bin", "--out", "blob.json"])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (1, "", "alknet: error: blob.json already exists (use --force to overwrite)\n")
    assert stream.tell() == 0 and Path("blob.json").read_bytes() == before
    rc, _, _ = secret(
        monkeypatch, capsys, ABANDON + "\n", "decrypt", "--in", "blob.json", "--out", "plain.bin"
    )
    assert rc == 0 and Path("plain.bin").read_bytes() == payload
    assert stat.S_IMODE(Path("plain.bin").stat().st_mode) == 0o600
    rc, _, _ = secret(
        monkeypatch, capsys, ABANDON + "\n", "decrypt", "--in", "blob.json", "--out", "plain.bin", "--force"
    )
    assert rc == 0 and Path("plain.bin").read_bytes() == payload
    assert [p.name for p in Path().iterdir() if p.name.endswith(".tmp")] == []
    rc, _, err = secret(monkeypatch, capsys, ABANDON + "\n", "decrypt", "--in", "missing.json")
    assert rc == 2 and "cannot read missing.json" in err
    rc, _, err = secret(
        monkeypatch, capsys, ABANDON + "\n", "decrypt", "--in", "blob.json", "--out", "nodir/x"
    )
    assert rc == 2 and "directory nodir does not exist" in err


def test_stdin_plain_text_stream(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{ABANDON}\n{KNOWN_BLOB}\n"))
    assert main(["secret", "decrypt"]) == 0
    assert capsys.readouterr().out == "alknet"


def test_terminal_prompts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = terminal(monkeypatch, [ABANDON, ""])
    assert main(["secret", "derive", "--purpose", "identity", "--passphrase"]) == 0
    assert prompts == ["mnemonic words: ", "BIP39 passphrase: "]
    assert capsys.readouterr().out == IDENTITY_LINE + "\n"
    Path("blob.json").write_text(KNOWN_BLOB)
    prompts = terminal(monkeypatch, [ABANDON])
    assert main(["secret", "decrypt", "--in", "blob.json"]) == 0
    assert prompts == ["mnemonic words: "] and capsys.readouterr().out == "alknet"
    # stdin is the terminal: words from the prompt, the data typed after it
    terminal(monkeypatch, [ABANDON], data="typed text")
    assert main(["secret", "encrypt"]) == 0
    blob = EncryptedData.from_json(capsys.readouterr().out)
    assert decrypt_with_key(bytes.fromhex(V2_KEY), blob) == b"typed text"


# ------------------------------------------------------------------------------------------ real process


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("alknet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "alknet.cli"]


def test_encrypt_pipe_decrypt_in_real_processes(tmp_path: Path, phrases: list[str]) -> None:
    words = generate_mnemonic(12)
    phrases.append(words)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    enc = subprocess.run(
        [*_console_script(), "secret", "encrypt", "--passphrase", "--aad", "note"],
        input=f"{words}\n{PASSPHRASES[1]}\nhi\n".encode(),
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert (enc.returncode, enc.stderr) == (0, b"")
    dec = subprocess.run(
        [*_console_script(), "secret", "decrypt", "--passphrase", "--aad", "note"],
        input=f"{words}\n{PASSPHRASES[1]}\n".encode() + enc.stdout,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert (dec.returncode, dec.stdout, dec.stderr) == (0, b"hi\n", b"")
    flipped = json.loads(enc.stdout)
    flipped["data"] = _flip(flipped["data"])
    bad = subprocess.run(
        [*_console_script(), "secret", "decrypt", "--passphrase", "--aad", "note", "--out", "p"],
        input=f"{words}\n{PASSPHRASES[1]}\n{json.dumps(flipped)}".encode(),
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, b"", FAILED.encode())
    assert not (tmp_path / "p").exists()
