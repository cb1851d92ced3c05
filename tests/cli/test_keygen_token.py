"""``alknet keygen`` (cli.md §5, without mnemonics) and ``alknet token`` (cli.md §6)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from alknet.cli.main import main
from alknet.core.auth.keys import load_private_key, parse_public_key

LINE_RE = re.compile(r"^fingerprint=(SHA256:[A-Za-z0-9+/]{43}) endpoint_id=([0-9a-f]{64}) path=(.+)$")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("ALKNET_HOME", "ALKNET_CONFIG", "ALKNET_IDENTITY", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _keygen(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["keygen", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _ssh_keygen_fp(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_keygen_writes_pair_matching_ssh_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = tmp_path / "k"
    rc, out, err = _keygen(capsys, "-o", str(k))
    assert rc == 0 and err == ""
    m = LINE_RE.match(out.strip())
    assert m and m.group(3) == str(k)
    assert stat.S_IMODE(k.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644
    assert _ssh_keygen_fp(tmp_path / "k.pub") == m.group(1)
    pub = parse_public_key((tmp_path / "k.pub").read_text())
    assert pub.comment == "alknet-identity" and pub.endpoint_id == m.group(2)
    # ssh-keygen can read the private key and derive the same public key
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(k)], capture_output=True, text=True, check=True
    ).stdout
    assert derived.split()[:2] == pub.line.split()[:2]


def test_keygen_refuses_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = tmp_path / "k"
    assert _keygen(capsys, "-f", str(k))[0] == 0
    before = (k.read_bytes(), (tmp_path / "k.pub").read_bytes())
    rc, out, err = _keygen(capsys, "-f", str(k))
    assert rc == 1 and out == ""
    assert err == f"alknet: error: {k} already exists (use --force to overwrite)\n"
    assert (k.read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    # only the .pub existing is refused too, and the private file is not created
    k2 = tmp_path / "k2"
    (tmp_path / "k2.pub").write_text("x\n")
    rc, _, err = _keygen(capsys, "-o", str(k2))
    assert rc == 1 and not k2.exists() and "k2.pub already exists" in err
    rc, out, _ = _keygen(capsys, "-f", str(k), "--force")
    assert rc == 0 and (k.read_bytes(), (tmp_path / "k.pub").read_bytes()) != before
    assert stat.S_IMODE(k.stat().st_mode) == 0o600


def test_keygen_state_dir_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "a"))
    assert _keygen(capsys)[0] == 0
    assert stat.S_IMODE((tmp_path / "a" / "id_ed25519").stat().st_mode) == 0o600
    assert (tmp_path / "a" / "id_ed25519.pub").is_file()
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert _keygen(capsys, "--state-dir", str(tmp_path / "b"))[0] == 0
    assert (tmp_path / "b" / "id_ed25519").is_file()
    monkeypatch.delenv("ALKNET_HOME")
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "c"}"\n')
    assert _keygen(capsys, "--config", str(cfg))[0] == 0
    assert (tmp_path / "c" / "id_ed25519").is_file()
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "d"}"\n')
    rc, out, err = _keygen(capsys, "--config", str(cfg))
    assert rc == 2 and out == "" and "server.state_dir" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_keygen_default_platform_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _keygen(capsys)[0] == 0
    assert (tmp_path / "home" / ".local" / "share" / "alknet" / "id_ed25519").is_file()


def test_keygen_role_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _keygen(capsys, "--state-dir", str(tmp_path / "s"), "--role", "host")[0] == 0
    pub = parse_public_key((tmp_path / "s" / "host_key.pub").read_text())
    assert pub.comment == "alknet-host"


def test_keygen_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _keygen(capsys, "-o", str(tmp_path / "nope" / "k"))
    assert rc == 2 and "does not exist" in err and len(err.splitlines()) == 1


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_token_is_signed_by_the_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = tmp_path / "k"
    assert main(["keygen", "-o", str(k)]) == 0
    capsys.readouterr()
    assert main(["token", "--identity", str(k), "--at", "1700000000"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    token = out.rstrip("\n")
    assert out.endswith("\n") and re.fullmatch(r"[A-Za-z0-9_-]{139}", token)
    raw = _b64url_decode(token)
    assert len(raw) == 104
    pub = parse_public_key((tmp_path / "k.pub").read_text())
    assert raw[:32] == hashlib.sha256(pub.raw).digest()
    assert int.from_bytes(raw[32:40], "big") == 1700000000
    Ed25519PublicKey.from_public_bytes(pub.raw).verify(raw[40:], raw[:40])


def test_token_reference_vector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from alknet.core.auth.keys import private_key_to_openssh

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    k = tmp_path / "ref"
    k.write_bytes(private_key_to_openssh(key))
    os.chmod(k, 0o600)
    assert load_private_key(k) is not None
    assert main(["token", "--identity", str(k), "--at", "1700000000"]) == 0
    assert capsys.readouterr().out == (
        "Vkdap1RjR0wChd9dvyvKtz2mUTWIOem3dIGy6rEHcIwAAAAAZVPxAAHQqPbo0lcpPt9tPTVOmpHbY7ssx_ICqH6olz6MqagZT2Yv4hURcIUXGWsssvxqIrfOgGSOMNUBDrALIxCtMQs\n"
    )


def test_token_identity_from_env_and_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "s"))
    rc = main(["token"])
    _, err = capsys.readouterr()
    assert rc == 2 and "no identity key at" in err and "run 'alknet keygen'" in err
    assert main(["keygen"]) == 0
    assert main(["token"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("ALKNET_IDENTITY", str(tmp_path / "missing"))
    assert main(["token"]) == 2


def test_token_refuses_pem_and_bad_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = tmp_path / "pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    rc = main(["token", "--identity", str(pem)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == (
        f"alknet: error: {pem}: PEM keys are not supported; convert the key to OpenSSH format "
        "(e.g. ssh-keygen -p -f <file>)\n"
    )
    assert main(["token", "--identity", str(pem), "--at", "yesterday"]) == 2
