"""Host-key checking (transport-and-ssh.md §13): pin, TOFU known_hosts, mismatch (fatal), insecure."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path

import pytest
from ssh_client_helpers import Keys, TestSshServer, make_client, new_host_key, running_session

from alknet.core.auth.keys import PublicKey, generate_private_key, public_key_of
from alknet.core.errors import ConfigError
from alknet.core.ssh.known_hosts import (
    HostKeyMismatch,
    InsecureHostKey,
    KnownHostsFile,
    PinnedHostKey,
    host_key_verifier,
    iroh_host_field,
    known_hosts_host,
    parse_known_hosts,
)

pytestmark = pytest.mark.timeout(60)


def _key() -> PublicKey:
    return public_key_of(generate_private_key())


def _b64(key: PublicKey) -> str:
    return base64.b64encode(key.blob).decode()


def _events(caplog: pytest.LogCaptureFixture, msg: str) -> list[tuple[int, dict[str, object]]]:
    return [
        (r.levelno, dict(getattr(r, "alknet_fields", ()))) for r in caplog.records if r.getMessage() == msg
    ]


# ------------------------------------------------------------------------------------------ units


def test_host_fields() -> None:
    assert known_hosts_host("127.0.0.1", 2222) == "[127.0.0.1]:2222"
    assert known_hosts_host("::1", 2443) == "[::1]:2443"
    assert known_hosts_host("Example.COM", 22) == "[example.com]:22"
    assert iroh_host_field("AB" * 32) == "iroh:" + "ab" * 32


def test_pin_accepts_only_its_fingerprint() -> None:
    good, bad = _key(), _key()
    pinned = PinnedHostKey("[h]:1", good.fingerprint)
    pinned.verify(good)
    with pytest.raises(HostKeyMismatch) as info:
        pinned.verify(bad)
    assert (
        str(info.value) == f"host key mismatch for [h]:1: expected {good.fingerprint}, got {bad.fingerprint}"
    )
    with pytest.raises(ConfigError, match="invalid --host-key"):
        PinnedHostKey("[h]:1", "SHA256:short")


def test_verifier_modes_and_conflicts(tmp_path: Path) -> None:
    fp = _key().fingerprint
    assert isinstance(host_key_verifier("h", pin=fp), PinnedHostKey)
    assert isinstance(host_key_verifier("h", insecure=True), InsecureHostKey)
    assert isinstance(host_key_verifier("h", known_hosts=tmp_path / "kh"), KnownHostsFile)
    with pytest.raises(ConfigError):
        host_key_verifier("h", pin=fp, insecure=True)
    with pytest.raises(ConfigError):
        host_key_verifier("h")


def test_tofu_records_then_accepts_then_refuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    path = tmp_path / "state" / "known_hosts"
    first, other = _key(), _key()
    kh = KnownHostsFile(path, "[127.0.0.1]:2222")
    kh.verify(first)
    assert path.read_text() == f"[127.0.0.1]:2222 ssh-ed25519 {_b64(first)}\n"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert _events(caplog, "new host key trusted on first use") == [
        (logging.WARNING, {"host": "[127.0.0.1]:2222", "fingerprint": first.fingerprint})
    ]
    caplog.clear()
    kh.verify(first)  # known: silent, nothing written
    assert caplog.records == []
    before = path.read_bytes()
    with pytest.raises(HostKeyMismatch) as info:
        kh.verify(other)
    assert str(info.value) == (
        f"host key mismatch for [127.0.0.1]:2222: expected {first.fingerprint}, got {other.fingerprint}"
    )
    assert path.read_bytes() == before
    # another host is independent
    KnownHostsFile(path, "[127.0.0.1]:2223").verify(other)
    assert path.read_text().count("\n") == 2


def test_openssh_file_features(tmp_path: Path) -> None:
    a, b, c = _key(), _key(), _key()
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[hashed.test]:2222", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    text = "\n".join(
        [
            "# comment",
            "",
            f"@cert-authority * ssh-ed25519 {_b64(c)}",
            f"[rsa.test]:2222 ssh-rsa {_b64(c)}",
            "garbage line",
            f"[x.test]:1,[y.test]:2 ssh-ed25519 {_b64(a)} comment here",
            f"{hashed} ssh-ed25519 {_b64(b)}",
            f"[*.wild]:2222,![no.wild]:2222 ssh-ed25519 {_b64(c)}",
        ]
    )
    path = tmp_path / "known_hosts"
    path.write_text(text)  # no trailing newline
    entries = parse_known_hosts(text)
    assert [e.line_no for e in entries] == [6, 7, 8]
    KnownHostsFile(path, "[y.test]:2").verify(a)
    KnownHostsFile(path, "[hashed.test]:2222").verify(b)
    KnownHostsFile(path, "[a.wild]:2222").verify(c)
    with pytest.raises(HostKeyMismatch):
        KnownHostsFile(path, "[hashed.test]:2222").verify(a)
    # a negated pattern is not a match: the host is new, recorded after a newline
    KnownHostsFile(path, "[no.wild]:2222").verify(a)
    # an RSA line for the host does not count: only ssh-ed25519 entries match
    KnownHostsFile(path, "[rsa.test]:2222").verify(b)
    lines = path.read_text().splitlines()
    assert lines[-2:] == [f"[no.wild]:2222 ssh-ed25519 {_b64(a)}", f"[rsa.test]:2222 ssh-ed25519 {_b64(b)}"]
    assert lines[7] == f"[*.wild]:2222,![no.wild]:2222 ssh-ed25519 {_b64(c)}"


def test_concurrent_first_use_writes_one_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    key = _key()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            KnownHostsFile(path, "[h]:1").verify(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert path.read_text().count("\n") == 1


def test_insecure_warns_on_every_check(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    key = _key()
    ins = InsecureHostKey("[h]:1")
    ins.verify(key)
    ins.verify(_key())
    assert len(_events(caplog, "host key not verified (--insecure-host-key)")) == 2
    assert all(
        level == logging.WARNING
        for level, _ in _events(caplog, "host key not verified (--insecure-host-key)")
    )


# ------------------------------------------------------------------------------------------ end to end


async def test_tofu_then_changed_host_key_stops_the_client(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    state = tmp_path / "state"
    server = TestSshServer(keys)
    await server.start()
    try:
        client = make_client(keys, server.port, host_key=None, state_dir=state)
        conn = await client.connect()
        await conn.aclose()
        known = state / "known_hosts"
        assert known.read_text() == f"[127.0.0.1]:{server.port} {keys.host_public_line.split()[0]} " + (
            keys.host_public_line.split()[1] + "\n"
        )
        # the same key again: accepted, nothing new written
        conn = await client.connect()
        await conn.aclose()
        before = known.read_bytes()

        # the server gets a new host key on the same port
        await server.stop()
        old_fp = keys.host_fingerprint
        server.host_key = new_host_key()
        await server.start()
        new_fp = PublicKey.from_blob(server.host_key.public_data).fingerprint
        caplog.clear()
        async with running_session(make_client(keys, server.port, host_key=None, state_dir=state)) as (
            _,
            task,
        ):
            with pytest.raises(HostKeyMismatch) as info:
                await asyncio.wait_for(task, 10)
        assert str(info.value) == (
            f"host key mismatch for [127.0.0.1]:{server.port}: expected {old_fp}, got {new_fp}"
        )
        assert known.read_bytes() == before
        # fatal: never retried, no reconnect line
        assert not [r for r in caplog.records if r.getMessage() in ("reconnecting", "connected")]
    finally:
        await server.stop()


async def test_pin_ok_and_pin_mismatch_end_to_end(
    keys: Keys, ssh_server: TestSshServer, tmp_path: Path
) -> None:
    # pin ok: no known_hosts file is read or written even with a state dir given
    state = tmp_path / "state"
    client = make_client(keys, ssh_server.port, state_dir=state)
    conn = await client.connect()
    assert conn.host_key is not None and conn.host_key.fingerprint == keys.host_fingerprint
    await conn.aclose()
    assert not state.exists()

    wrong = _key().fingerprint
    client = make_client(keys, ssh_server.port, host_key=wrong)
    with pytest.raises(HostKeyMismatch) as info:
        await client.connect()
    assert str(info.value) == (
        f"host key mismatch for [127.0.0.1]:{ssh_server.port}: expected {wrong}, got {keys.host_fingerprint}"
    )
    assert ssh_server.usernames == ["alknet"]  # the mismatching attempt never got to auth


async def test_insecure_host_key_connects_and_warns_each_time(
    keys: Keys, ssh_server: TestSshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    client = make_client(keys, ssh_server.port, host_key=None, insecure_host_key=True)
    for _ in range(2):
        conn = await client.connect()
        await conn.aclose()
    events = _events(caplog, "host key not verified (--insecure-host-key)")
    assert [fields["fingerprint"] for _, fields in events] == [keys.host_fingerprint] * 2
