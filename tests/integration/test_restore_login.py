"""Restoring a node from its words (cli.md §5, secret.md §10, docs/secrets.md §3).

Machine A runs ``alknet keygen --new-mnemonic`` and ``--from-mnemonic --role host``; a real ``SshServer`` on
loopback authorises A's public key. A's state directory is then lost. Machines B and C restore both keys from
the words with ``keygen --from-mnemonic``: C's identity logs in to the server (which runs with B's restored
host key) while the client pins A's original host key, and B and C report the same endpoint id as A.
No file under the test directory and no log line at DEBUG holds the words.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import LogCapture, T, client_options, new_keypair

from alknet.cli.main import main
from alknet.core.auth.identity import Identity
from alknet.core.auth.keys import parse_public_key
from alknet.core.config.reloader import ConfigReloader, build_dynamic
from alknet.core.config.static import ListenerSpec
from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions

PASSPHRASE = "Restore Me Exactly "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("ALKNET_HOME", "ALKNET_CONFIG", "ALKNET_IDENTITY", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def keygen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *argv: str
) -> list[str]:
    """Run ``alknet keygen`` in-process with ``stdin`` as a pipe; returns the stdout lines."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    rc = main(["keygen", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out.splitlines()


def fields(summary: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in summary.split())


@asynccontextmanager
async def ssh_server(host_key: Path, authorized_keys: str) -> AsyncIterator[SshServer]:
    """A real ``SshServer`` on 127.0.0.1 with this host key file and these authorised keys."""
    reloader = ConfigReloader.from_loaded(build_dynamic(authorized_keys.encode()))
    options = SshServerOptions(
        host_key=host_key, listeners=(ServerListener(ListenerSpec(kind="tcp", host="127.0.0.1", port=0)),)
    )
    server = SshServer(options, reloader)
    await asyncio.wait_for(server.start(), T)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(drain=0.2), T)


def port_of(server: SshServer) -> int:
    return int(server.listen_addrs[0].rpartition(":")[2])


async def test_restored_identity_logs_in_and_host_key_keeps_endpoint_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with LogCapture("debug") as logs:
        # machine A: fresh words (with a passphrase), its identity and its host key
        out = keygen(
            monkeypatch, capsys, PASSPHRASE + "\n", "--state-dir", str(a), "--new-mnemonic", "--passphrase"
        )
        words, identity_summary = out
        assert len(words.split()) == 24
        secrets_stdin = f"{words}\n{PASSPHRASE}\n"
        (host_summary,) = keygen(
            monkeypatch,
            capsys,
            secrets_stdin,
            "--state-dir",
            str(a),
            "--from-mnemonic",
            "--passphrase",
            "--role",
            "host",
        )
        original_identity = (a / "id_ed25519.pub").read_text()
        original_host = (a / "host_key.pub").read_text()
        authorized = original_identity  # what the server operator recorded
        shutil.rmtree(a)  # machine A is lost

        # machines B and C restore both keys from the words
        restored: dict[Path, tuple[str, str]] = {}
        for machine in (b, c):
            (ident,) = keygen(
                monkeypatch,
                capsys,
                secrets_stdin,
                "--state-dir",
                str(machine),
                "--from-mnemonic",
                "--passphrase",
            )
            (host,) = keygen(
                monkeypatch,
                capsys,
                secrets_stdin,
                "--state-dir",
                str(machine),
                "--from-mnemonic",
                "--passphrase",
                "--role",
                "host",
            )
            restored[machine] = (ident, host)
            assert (machine / "id_ed25519.pub").read_text() == original_identity
            assert (machine / "host_key.pub").read_text() == original_host
        for ident, host in restored.values():
            assert {k: v for k, v in fields(ident).items() if k != "path"} == {
                k: v for k, v in fields(identity_summary).items() if k != "path"
            }
            assert fields(host)["endpoint_id"] == fields(host_summary)["endpoint_id"]
            assert fields(host)["fingerprint"] == fields(host_summary)["fingerprint"]
        assert fields(host_summary)["endpoint_id"] == parse_public_key(original_host).endpoint_id

        # without the passphrase the words give another node: its key is refused below
        keygen(monkeypatch, capsys, words + "\n", "-o", str(tmp_path / "nopass"), "--from-mnemonic")

        # the server runs with B's restored host key; C's restored identity logs in, pinning A's host key
        async with ssh_server(b / "host_key", authorized) as server:
            assert server.host_key_fingerprint == fields(host_summary)["fingerprint"]
            port = port_of(server)
            known_hosts = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {original_host}")
            client_key = asyncssh.read_private_key(str(c / "id_ed25519"))
            opts = client_options(client_keys=[client_key], known_hosts=known_hosts)
            conn = await asyncio.wait_for(asyncssh.connect("127.0.0.1", port, **opts), T)
            try:
                (session,) = server.sessions()
                assert session.identity == Identity(
                    fields(identity_summary)["fingerprint"], ("relay:connect",)
                )
                host_seen = conn.get_server_host_key()
                assert host_seen is not None
                assert (
                    host_seen.export_public_key("openssh").decode().split()[:2] == original_host.split()[:2]
                )
            finally:
                conn.close()
                await asyncio.wait_for(conn.wait_closed(), T)

            for other in (asyncssh.read_private_key(str(tmp_path / "nopass")), new_keypair().ssh_key):
                with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
                    bad = await asyncio.wait_for(
                        asyncssh.connect(
                            "127.0.0.1", port, **client_options(client_keys=[other], known_hosts=known_hosts)
                        ),
                        T,
                    )
                    bad.close()
        await logs.wait_for('msg="connection closed"', count=3)

    accepted = [line for line in logs.matching('msg="auth attempt"') if line.endswith("result=accept")]
    assert len(accepted) == 1 and f"key_fingerprint={fields(identity_summary)['fingerprint']}" in accepted[0]

    # the words and the passphrase are nowhere on disk and in no log line
    needles = [words] + [" ".join(pair) for pair in itertools.pairwise(words.split())] + [PASSPHRASE.strip()]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(n.encode() in data for n in needles), path
    assert not any(n in logs.text for n in needles)
