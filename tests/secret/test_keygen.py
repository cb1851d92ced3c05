"""OpenSSH key files from seed words (secret.md §10; library side of cli.md §5 ``keygen --from-mnemonic``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
    load_ssh_public_key,
)

from alknet.secret import (
    IDENTITY_PATH,
    SSH_HOST_PATH,
    InvalidMnemonicError,
    KeyRole,
    default_key_filename,
    derive_ed25519_from_seed,
    derive_role_key,
    ed25519_private_openssh,
    ed25519_public_openssh,
    keygen_from_mnemonic,
    mnemonic_to_seed,
    openssh_fingerprint,
    role_comment,
    role_path,
    write_keypair,
)
from alknet.secret.derive import derive_aes_key_from_seed

from .known import (
    ABANDON,
    HOST_FINGERPRINT,
    HOST_LINE,
    IDENTITY_FINGERPRINT,
    IDENTITY_LINE,
    IDENTITY_PRIVATE,
    IDENTITY_PUBLIC,
)

SSH_KEYGEN = shutil.which("ssh-keygen")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_keygen_known_answer(tmp_path: Path) -> None:
    out = tmp_path / "k"
    result = keygen_from_mnemonic(out, ABANDON)
    assert result.summary() == (
        f"fingerprint={IDENTITY_FINGERPRINT} endpoint_id={IDENTITY_PUBLIC} path={out}"
    )
    assert (tmp_path / "k.pub").read_text() == IDENTITY_LINE + " alknet-identity\n"
    assert result.public_line == IDENTITY_LINE + " alknet-identity"
    data = out.read_bytes()
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _mode(out) == 0o600
    assert _mode(tmp_path / "k.pub") == 0o644
    loaded = load_ssh_private_key(data, None)
    assert isinstance(loaded, Ed25519PrivateKey)
    raw = loaded.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert raw.hex() == IDENTITY_PRIVATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]  # no temp files left


def test_summary_uses_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = keygen_from_mnemonic("k", ABANDON)
    assert result.summary() == f"fingerprint={IDENTITY_FINGERPRINT} endpoint_id={IDENTITY_PUBLIC} path=k"


def test_host_keygen_known_answer(tmp_path: Path) -> None:
    result = keygen_from_mnemonic(tmp_path / "host_key", ABANDON, role="host")
    assert (tmp_path / "host_key.pub").read_text() == HOST_LINE + " alknet-host\n"
    assert result.fingerprint == HOST_FINGERPRINT
    again = keygen_from_mnemonic(tmp_path / "host_key2", ABANDON, role=KeyRole.HOST)
    assert (tmp_path / "host_key2.pub").read_bytes() == (tmp_path / "host_key.pub").read_bytes()
    assert again.endpoint_id == result.endpoint_id


def test_device_role_and_passphrase(tmp_path: Path) -> None:
    result = keygen_from_mnemonic(tmp_path / "d", ABANDON, role="device", device=3)
    assert (tmp_path / "d.pub").read_text().endswith(" alknet-device-3\n")
    expected = derive_ed25519_from_seed(mnemonic_to_seed(ABANDON), "m/74'/0'/0'/3'")
    assert result.endpoint_id == expected.public_key.hex()
    with_pass = keygen_from_mnemonic(tmp_path / "p", ABANDON, "a passphrase")
    assert with_pass.fingerprint != IDENTITY_FINGERPRINT


def test_role_table() -> None:
    assert role_path("identity") == IDENTITY_PATH
    assert role_path(KeyRole.HOST) == SSH_HOST_PATH
    assert role_path("device", 7) == "m/74'/0'/0'/7'"
    assert role_comment("identity") == "alknet-identity"
    assert role_comment("host") == "alknet-host"
    assert role_comment("device", 7) == "alknet-device-7"
    assert default_key_filename("identity") == "id_ed25519"
    assert default_key_filename("device") == "id_ed25519"
    assert default_key_filename("host") == "host_key"


@pytest.mark.parametrize(
    ("role", "device"),
    [("device", None), ("device", 0), ("device", -1), ("device", True), ("identity", 1), ("x", None)],
)
def test_role_errors_write_nothing(tmp_path: Path, role: str, device: int | None) -> None:
    with pytest.raises(ValueError):
        keygen_from_mnemonic(tmp_path / "k", ABANDON, role=role, device=device)
    assert list(tmp_path.iterdir()) == []


def test_invalid_words_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidMnemonicError) as info:
        keygen_from_mnemonic(tmp_path / "k", "abandon " * 12)
    assert str(info.value) == "checksum mismatch"
    assert list(tmp_path.iterdir()) == []


def test_existing_files_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "k"
    keygen_from_mnemonic(out, ABANDON)
    private_before = out.read_bytes()
    public_before = (tmp_path / "k.pub").read_bytes()
    with pytest.raises(FileExistsError) as info:
        keygen_from_mnemonic(out, ABANDON, role="host")
    assert str(out) in str(info.value)
    assert out.read_bytes() == private_before
    assert (tmp_path / "k.pub").read_bytes() == public_before
    keygen_from_mnemonic(out, ABANDON, role="host", overwrite=True)
    assert (tmp_path / "k.pub").read_text() == HOST_LINE + " alknet-host\n"
    assert _mode(out) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]


def test_existing_pub_alone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("old\n")
    with pytest.raises(FileExistsError):
        keygen_from_mnemonic(tmp_path / "k", ABANDON)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    assert (tmp_path / "k.pub").read_text() == "old\n"


def test_write_keypair_argument_checks(tmp_path: Path) -> None:
    key = derive_role_key(ABANDON)
    for comment in ("a\nb", "a\rb"):
        with pytest.raises(ValueError):
            write_keypair(tmp_path / "k", key, comment=comment)
    aes = derive_aes_key_from_seed(mnemonic_to_seed(ABANDON), "m/74'/2'/0'/0'")
    with pytest.raises(ValueError):
        write_keypair(tmp_path / "k", aes, comment="x")
    assert list(tmp_path.iterdir()) == []


def test_public_line_and_private_pem_functions() -> None:
    key = derive_role_key(ABANDON)
    assert ed25519_public_openssh(key.public_key) == IDENTITY_LINE
    assert ed25519_public_openssh(key.public_key, "c") == IDENTITY_LINE + " c"
    loaded = load_ssh_public_key(IDENTITY_LINE.encode())
    assert loaded.public_bytes(Encoding.Raw, PublicFormat.Raw) == key.public_key
    pem = ed25519_private_openssh(key.private_key)
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(ValueError):
        ed25519_private_openssh(bytes(31))
    with pytest.raises(ValueError):
        openssh_fingerprint(bytes(33))


@pytest.mark.skipif(SSH_KEYGEN is None, reason="needs ssh-keygen (Debian package openssh-client)")
def test_ssh_keygen_agrees(tmp_path: Path) -> None:
    assert SSH_KEYGEN is not None
    out = tmp_path / "k"
    keygen_from_mnemonic(out, ABANDON)
    derived = subprocess.run([SSH_KEYGEN, "-y", "-f", str(out)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == IDENTITY_LINE.split()
    listed = subprocess.run(
        [SSH_KEYGEN, "-lf", str(out) + ".pub"], capture_output=True, text=True, check=True
    )
    assert IDENTITY_FINGERPRINT in listed.stdout.split()


def test_umask_does_not_widen_or_narrow_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        keygen_from_mnemonic(tmp_path / "k", ABANDON)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600
    assert _mode(tmp_path / "k.pub") == 0o644
