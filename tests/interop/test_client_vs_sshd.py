"""Interop: the alknet SSH client (ClientSession) against a stock OpenSSH ``sshd`` on a loopback port.

transport-and-ssh.md §2: ``alknet connect --server 127.0.0.1:<sshd port> --host-key <fp>`` serves SOCKS5 and
``-L`` correctly (and ``-R``). sshd runs in the foreground (``-D -e``) with a temporary config: an Ed25519
host key, ``AuthorizedKeysFile`` with the test key, ``UsePAM no``, ``StrictModes no``, ``PidFile none``.
Run as root, sshd needs its privilege separation directory ``/run/sshd`` (created here if missing, as the
Debian service unit does); run as another user, sshd logs that user in.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of
from alknet.core.ssh.client import ClientOptions, SshClient
from alknet.core.ssh.forwards import parse_local_forward, parse_remote_forward
from alknet.core.ssh.known_hosts import HostKeyMismatch
from alknet.core.ssh.session import ClientSession, SessionOptions

pytestmark = pytest.mark.timeout(90)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BODY = b"served to the alknet client through OpenSSH\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    user: str
    host_fingerprint: str
    client_key: bytes
    log: Path


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[Sshd]:
    if not os.path.isfile(SSHD) or not os.access(SSHD, os.X_OK):
        pytest.skip("OpenSSH sshd is not installed")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host = generate_private_key()
    client = generate_private_key()
    host_key = tmp_path / "ssh_host_ed25519_key"
    host_key.write_bytes(private_key_to_openssh(host, "sshd host"))
    host_key.chmod(0o600)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(public_key_of(client, "alknet test").line + "\n")
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "UsePAM no",
                "StrictModes no",
                "PidFile none",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "GatewayPorts no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log = tmp_path / "sshd.log"
    with open(log, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(SSHD, "-D", "-e", "-f", str(config), stderr=log_file)
    try:
        async with asyncio.timeout(15):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"sshd exited: {log.read_text()}")
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        yield Sshd(
            port=port,
            user=getpass.getuser(),
            host_fingerprint=public_key_of(host).fingerprint,
            client_key=private_key_to_openssh(client),
            log=log,
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def http_target() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                + BODY
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def _client(sshd: Sshd, **extra: object) -> SshClient:
    fields: dict[str, object] = {
        "server": f"127.0.0.1:{sshd.port}",
        "identity": sshd.client_key,
        "user": sshd.user,
        "host_key": sshd.host_fingerprint,
    }
    fields.update(extra)
    return SshClient(ClientOptions(**fields))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _session(client: SshClient, options: SessionOptions) -> AsyncIterator[ClientSession]:
    session = ClientSession(client, options)
    await session.start()
    task = asyncio.ensure_future(session.run())
    try:
        await asyncio.wait_for(session.wait_connected(), 15)
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await session.aclose(drain=0)


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "15",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def _get(port: int) -> bytes:
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
    return data.partition(b"\r\n\r\n")[2]


async def test_socks5_and_local_forward_through_stock_sshd(sshd: Sshd, http_target: int) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    opts = SessionOptions(
        socks5=("127.0.0.1", 0), forwards=(parse_local_forward(f"0:127.0.0.1:{http_target}"),)
    )
    async with _session(_client(sshd), opts) as session:
        conn = session.connection
        assert conn is not None
        assert str(conn.ssh.get_extra_info("server_version")).startswith("SSH-2.0-OpenSSH")
        assert conn.ssh.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert session.socks5 is not None
        proxy = f"127.0.0.1:{session.socks5.port}"
        for url in (f"http://127.0.0.1:{http_target}/", f"http://localhost:{http_target}/"):
            rc, out, err = await _curl("--socks5-hostname", proxy, url)
            assert (rc, out) == (0, BODY), err
        local = session.forward_listeners[0].port
        rc, out, err = await _curl("--noproxy", "*", f"http://127.0.0.1:{local}/")
        assert (rc, out) == (0, BODY), err
    assert "Accepted publickey" in sshd.log.read_text()


async def test_remote_forward_port_zero_through_stock_sshd(
    sshd: Sshd, http_target: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    opts = SessionOptions(socks5=None, remote_forwards=(parse_remote_forward(f"0:127.0.0.1:{http_target}"),))
    async with _session(_client(sshd), opts) as session:
        port = session.remote_ports[1]
        assert port > 0
        assert await _get(port) == BODY
    bound = [
        dict(getattr(r, "alknet_fields", ()))
        for r in caplog.records
        if r.getMessage() == "remote forward bound"
    ]
    assert bound == [{"port": port}]


async def test_host_key_pin_mismatch_against_sshd(sshd: Sshd) -> None:
    wrong = public_key_of(generate_private_key()).fingerprint
    with pytest.raises(HostKeyMismatch) as info:
        await _client(sshd, host_key=wrong).connect()
    assert str(info.value) == (
        f"host key mismatch for [127.0.0.1]:{sshd.port}: expected {wrong}, got {sshd.host_fingerprint}"
    )
