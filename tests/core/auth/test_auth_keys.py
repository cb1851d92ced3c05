"""auth-and-config.md §2: OpenSSH Ed25519 keys, refusals with their exact messages, fingerprints, files."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
from pathlib import Path

import pytest
from auth_helpers import REF_FP, REF_LINE, REF_SEED, REF_TOKEN_KEY_ID, keygen_fingerprint, ref_key, ssh_keygen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from alknet.core.auth.keys import (
    MSG_ENCRYPTED,
    MSG_PEM,
    PublicKey,
    endpoint_id,
    fingerprint,
    generate_private_key,
    is_fingerprint,
    load_private_key,
    parse_public_key,
    private_key_to_openssh,
    public_key_of,
    token_key_id,
    write_keypair,
)
from alknet.core.errors import KeyFormatError

RSA_MSG = "unsupported key type ssh-rsa (only ssh-ed25519 is accepted)"
ECDSA_MSG = "unsupported key type ecdsa-sha2-nistp256 (only ssh-ed25519 is accepted)"


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


# ----------------------------------------------------------------------------------------- reference vector


def test_reference_vector_reproduces_exactly() -> None:
    pub = public_key_of(ref_key())
    assert pub.line == REF_LINE
    assert pub.fingerprint == REF_FP
    assert len(pub.blob) == 51
    assert fingerprint(pub.blob) == REF_FP
    assert token_key_id(pub.raw).hex() == REF_TOKEN_KEY_ID
    assert pub.token_key_id.hex() == REF_TOKEN_KEY_ID
    assert pub.endpoint_id == endpoint_id(pub.raw) == pub.raw.hex()
    assert len(pub.endpoint_id) == 64 and pub.endpoint_id == pub.endpoint_id.lower()
    # fingerprint and token key id are different values
    assert base64.b64decode(REF_FP[7:] + "=") != bytes.fromhex(REF_TOKEN_KEY_ID)


def test_reference_vector_matches_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "ref.pub"
    path.write_text(REF_LINE + " ref\n")
    assert keygen_fingerprint(path) == REF_FP
    assert parse_public_key(path.read_text()).fingerprint == REF_FP


def test_key_written_by_ssh_keygen_loads_with_the_same_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "made by ssh-keygen", "-f", str(path))
    key = load_private_key(path)
    pub_file = parse_public_key(Path(str(path) + ".pub").read_bytes())
    assert public_key_of(key).raw == pub_file.raw
    assert pub_file.comment == "made by ssh-keygen"
    assert pub_file.fingerprint == keygen_fingerprint(Path(str(path) + ".pub")) == keygen_fingerprint(path)
    # bytes input gives the same key as the path
    assert load_private_key(path.read_bytes()).private_bytes_raw() == key.private_bytes_raw()


# ----------------------------------------------------------------------------------------- refusals


def _pem(key: object, fmt: serialization.PrivateFormat) -> bytes:
    assert isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.mark.parametrize(
    ("make", "fmt", "header"),
    [
        (ed25519.Ed25519PrivateKey.generate, serialization.PrivateFormat.PKCS8, b"BEGIN PRIVATE KEY"),
        (
            lambda: rsa.generate_private_key(65537, 1024),
            serialization.PrivateFormat.TraditionalOpenSSL,
            b"BEGIN RSA PRIVATE KEY",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()),
            serialization.PrivateFormat.TraditionalOpenSSL,
            b"BEGIN EC PRIVATE KEY",
        ),
    ],
    ids=["pkcs8-ed25519", "pkcs1-rsa", "sec1-ec"],
)
def test_pem_private_keys_are_refused(make: object, fmt: serialization.PrivateFormat, header: bytes) -> None:
    assert callable(make)
    data = _pem(make(), fmt)
    assert header in data
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(data)
    assert str(exc.value) == MSG_PEM
    assert str(exc.value) == (
        "PEM keys are not supported; convert the key to OpenSSH format (e.g. ssh-keygen -p -f <file>)"
    )
    # after leading blank lines too
    with pytest.raises(KeyFormatError, match=r"^PEM keys are not supported"):
        load_private_key(b"\n\n  \n" + data)


def test_encrypted_pkcs8_pem_is_refused_as_pem() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(data)
    assert str(exc.value) == MSG_PEM


def test_rsa_openssh_private_key_is_refused_with_its_type(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(data)
    assert str(exc.value) == RSA_MSG


def test_rsa_key_from_ssh_keygen_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id_rsa"
    ssh_keygen("-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path))
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(path)
    assert str(exc.value) == RSA_MSG
    with pytest.raises(KeyFormatError) as exc:
        parse_public_key(Path(str(path) + ".pub").read_text())
    assert str(exc.value) == RSA_MSG


def test_ecdsa_public_line_and_private_key_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "id_ecdsa"
    ssh_keygen("-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", str(path))
    line = Path(str(path) + ".pub").read_text()
    assert line.startswith("ecdsa-sha2-nistp256 ")
    with pytest.raises(KeyFormatError) as exc:
        parse_public_key(line)
    assert str(exc.value) == ECDSA_MSG
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(path)
    assert str(exc.value) == ECDSA_MSG


def test_encrypted_key_without_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "enc"
    ssh_keygen("-q", "-t", "ed25519", "-N", "correct horse", "-f", str(path))
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(path)
    assert str(exc.value) == MSG_ENCRYPTED == "key is encrypted; a passphrase is required"


def test_encrypted_key_with_right_and_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "enc"
    ssh_keygen("-q", "-t", "ed25519", "-N", "correct horse", "-f", str(path))
    key = load_private_key(path, passphrase=b"correct horse")
    assert public_key_of(key).raw == parse_public_key(Path(str(path) + ".pub").read_text()).raw
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(path, passphrase=b"wrong horse")
    assert str(exc.value) == "bad passphrase"


def test_encrypted_key_with_passphrase_but_no_bcrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bcrypt is a dependency (asyncssh[bcrypt]); simulate a broken install where cryptography lacks it
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import ssh as crypto_ssh

    def no_bcrypt(*_args: object, **_kwargs: object) -> bytes:
        raise UnsupportedAlgorithm("Need bcrypt module")

    monkeypatch.setattr(crypto_ssh, "_bcrypt_kdf", no_bcrypt)
    path = tmp_path / "enc"
    ssh_keygen("-q", "-t", "ed25519", "-N", "correct horse", "-f", str(path))
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(path, passphrase=b"correct horse")
    assert str(exc.value) == "encrypted OpenSSH keys need the 'bcrypt' package (pip install bcrypt)"


def test_passphrase_is_ignored_for_an_unencrypted_key() -> None:
    data = private_key_to_openssh(ref_key())
    assert load_private_key(data, passphrase=b"unused").private_bytes_raw() == REF_SEED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an OpenSSH private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)"),
        (b"hello world\n", "not an OpenSSH private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)"),
        (REF_LINE.encode(), "this is a public key; an OpenSSH private key file is needed"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "malformed OpenSSH private key"),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n",
            "malformed OpenSSH private key",
        ),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
            + base64.b64encode(b"openssh-key-v1\x00\x00\x00")
            + b"\n-----END OPENSSH PRIVATE KEY-----\n",
            "malformed OpenSSH private key",
        ),
    ],
    ids=["empty", "text", "public-line", "no-end", "bad-base64", "truncated"],
)
def test_malformed_private_keys(data: bytes, message: str) -> None:
    with pytest.raises(KeyFormatError) as exc:
        load_private_key(data)
    assert str(exc.value) == message


def test_private_key_with_mismatched_public_part_is_refused() -> None:
    good = private_key_to_openssh(ref_key())
    body = base64.b64decode(b"".join(good.splitlines()[1:-1]))
    other = public_key_of(generate_private_key()).blob
    ref_blob = public_key_of(ref_key()).blob
    tampered = body.replace(_ssh_string(ref_blob), _ssh_string(other), 1)
    assert tampered != body
    data = (
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + base64.b64encode(tampered)
        + b"\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyFormatError, match=r"^malformed OpenSSH private key"):
        load_private_key(data)


def test_leading_blank_lines_before_openssh_key_are_allowed() -> None:
    data = b"\n\r\n  \n" + private_key_to_openssh(ref_key())
    assert load_private_key(data).private_bytes_raw() == REF_SEED


def test_load_private_key_rejects_str_source() -> None:
    with pytest.raises(TypeError):
        load_private_key("/etc/passwd")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- public keys


def _line_for_blob(blob: bytes, keytype: str = "ssh-ed25519") -> str:
    return f"{keytype} {base64.b64encode(blob).decode()}"


REF_RAW = public_key_of(ref_key()).raw
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _non_canonical_b64(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    assert text.endswith("==")
    last = _B64.index(text[-3])
    assert last & 0x0F == 0
    bad = text[:-3] + _B64[last | 1] + "=="
    assert base64.b64decode(bad) == blob  # decodes leniently to the same bytes
    return bad


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty public key"),
        ("\n  \n", "empty public key"),
        ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n", MSG_PEM),
        (f"{REF_LINE}\n{REF_LINE}\n", "expected exactly one public key line"),
        ("ssh-ed25519", "missing base64 key data"),
        ("ssh-ed25519 AAAA%%%%", "invalid base64 key data"),
        ("ssh-ed25519 " + REF_LINE.split()[1] + "=", "invalid base64 key data"),
        # non-zero trailing bits in the last data character before the padding
        (
            "ssh-ed25519 " + _non_canonical_b64(public_key_of(ref_key()).blob + b"\x00"),
            "invalid base64 key data",
        ),
        (
            _line_for_blob(
                _ssh_string(b"ssh-rsa") + _ssh_string(b"\x01\x00\x01") + _ssh_string(b"\x00" * 64)
            ),
            RSA_MSG,
        ),
        (
            _line_for_blob(_ssh_string(b"ssh-ed25519") + _ssh_string(REF_RAW[:31])),
            "malformed ssh-ed25519 key data",
        ),
        (
            _line_for_blob(_ssh_string(b"ssh-ed25519") + _ssh_string(REF_RAW) + b"\x00"),
            "malformed ssh-ed25519 key data",
        ),
        (_line_for_blob(b"\x00\x00"), "malformed public key data"),
        (
            "ssh-ed25519-cert-v01@openssh.com AAAA",
            "unsupported key type ssh-ed25519-cert-v01@openssh.com (only ssh-ed25519 is accepted)",
        ),
        ("ssh-dss AAAA", "unsupported key type ssh-dss (only ssh-ed25519 is accepted)"),
    ],
    ids=[
        "empty",
        "blank",
        "pem",
        "two-lines",
        "no-data",
        "bad-b64",
        "padded-too-much",
        "trailing-bits",
        "rsa-blob",
        "short",
        "trailing-data",
        "garbage-blob",
        "certificate",
        "dss",
    ],
)
def test_public_key_refusals(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError) as exc:
        parse_public_key(text)
    assert str(exc.value) == message


def test_public_key_parsing_keeps_the_comment() -> None:
    pub = parse_public_key(f"\n{REF_LINE}  my laptop key\r\n")
    assert pub.raw == REF_RAW
    assert pub.comment == "my laptop key"
    assert pub.line == f"{REF_LINE} my laptop key"
    assert parse_public_key(REF_LINE.encode()).comment == ""
    assert PublicKey.from_blob(pub.blob) == PublicKey(REF_RAW)


def test_public_key_bytes_must_be_utf8() -> None:
    with pytest.raises(KeyFormatError) as exc:
        parse_public_key(b"ssh-ed25519 \xff\xfe")
    assert str(exc.value) == "not an OpenSSH public key (not UTF-8 text)"


def test_repr_never_shows_key_bytes() -> None:
    key = ref_key()
    pub = public_key_of(key, "c")
    text = repr(pub)
    assert text == f"PublicKey({REF_FP})"
    for secret in (REF_LINE.split()[1], REF_RAW.hex(), REF_SEED.hex(), repr(REF_RAW), repr(REF_SEED)):
        assert secret not in text


def test_public_key_validation() -> None:
    with pytest.raises(ValueError):
        PublicKey(b"\x00" * 31)
    with pytest.raises(ValueError):
        PublicKey(REF_RAW, "two\nlines")
    with pytest.raises(ValueError):
        token_key_id(b"\x00" * 33)
    with pytest.raises(ValueError):
        endpoint_id(b"")


# ----------------------------------------------------------------------------------------- fingerprints


def test_is_fingerprint_is_strict() -> None:
    md5 = hashlib.md5(public_key_of(ref_key()).blob).hexdigest()
    assert is_fingerprint(REF_FP)
    bad = [
        "sha256:" + REF_FP[7:],
        "Sha256:" + REF_FP[7:],
        REF_FP + "=",
        REF_FP[:-1],
        REF_FP + "A",
        "MD5:" + ":".join(md5[i : i + 2] for i in range(0, 32, 2)),
        "SHA256:" + REF_FP[7:-1] + "h",  # 'h' has non-zero trailing bits
        "SHA256:" + REF_FP[7:-1] + "-",  # base64url character
        " " + REF_FP,
        "",
        None,
        42,
        REF_FP.encode(),
    ]
    for value in bad:
        assert not is_fingerprint(value), value


# ------------------------------------------------------------------------------------ generation and files


def test_private_key_to_openssh_round_trips_with_cryptography_and_ssh_keygen(tmp_path: Path) -> None:
    key = generate_private_key()
    data = private_key_to_openssh(key, "a comment")
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert data.endswith(b"-----END OPENSSH PRIVATE KEY-----\n")
    assert all(len(line) <= 70 for line in data.splitlines())
    loaded = load_ssh_private_key(data, None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()
    path = tmp_path / "k"
    path.write_bytes(data)
    path.chmod(0o600)
    out = ssh_keygen("-y", "-f", str(path)).stdout.strip()
    assert out == public_key_of(key, "a comment").line
    with pytest.raises(ValueError):
        private_key_to_openssh(key, "bad\ncomment")


def test_write_keypair_modes_contents_and_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = generate_private_key()
    pub = write_keypair(path, key, "alknet-identity")
    pub_path = tmp_path / "id_ed25519.pub"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert pub_path.read_text() == pub.line + "\n"
    assert pub.line.endswith(" alknet-identity")
    assert load_private_key(path).private_bytes_raw() == key.private_bytes_raw()
    assert keygen_fingerprint(pub_path) == pub.fingerprint == keygen_fingerprint(path)
    assert ssh_keygen("-y", "-f", str(path)).stdout.split()[:2] == pub.line.split()[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "id_ed25519",
        "id_ed25519.pub",
    ]  # no temp files left


def test_write_keypair_is_exclusive_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_keypair(path, generate_private_key(), "one")
    before = (path.read_bytes(), (tmp_path / "k.pub").read_bytes())
    with pytest.raises(FileExistsError) as exc:
        write_keypair(path, generate_private_key(), "two")
    assert str(path) in str(exc.value)
    assert exc.value.filename == str(path)
    assert (path.read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    new = generate_private_key()
    pub = write_keypair(path, new, "three", force=True)
    assert load_private_key(path).private_bytes_raw() == new.private_bytes_raw()
    assert (tmp_path / "k.pub").read_text() == pub.line + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_keypair_existing_pub_blocks_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "k"
    (tmp_path / "k.pub").write_text("old\n")
    with pytest.raises(FileExistsError) as exc:
        write_keypair(path, generate_private_key(), "c")
    assert str(tmp_path / "k.pub") in str(exc.value)
    assert not path.exists()
    assert (tmp_path / "k.pub").read_text() == "old\n"


def test_write_keypair_rejects_multiline_comment(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_keypair(tmp_path / "k", generate_private_key(), "a\nb")
    assert list(tmp_path.iterdir()) == []


def test_write_keypair_ignores_umask_for_the_private_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_keypair(tmp_path / "k", generate_private_key(), "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644
