"""The SSH client connection (transport-and-ssh.md §13, §14, cli.md §3, overview.md §1 and §9).

Options and the transport builder, identity loading, the negotiated algorithms, ~/.ssh and agent isolation,
ambient proxy variables ignored, the client --proxy, auth rejected (ERROR, retried), connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from ssh_client_helpers import Keys, TestSshServer, fast_sleep, make_client, running_session

from alknet.core.auth.keys import MSG_PEM, public_key_of
from alknet.core.errors import ConfigError, KeyFormatError
from alknet.core.ssh.client import ClientOptions, SshClient, build_transport, load_identity, parse_server
from alknet.core.ssh.session import SessionOptions
from alknet.core.tls.context import ServerContexts
from alknet.core.transport.tcp import TcpTransport
from alknet.core.transport.tls import TlsTransport

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("127.0.0.1", "tcp", ("127.0.0.1", 2222)),
        ("127.0.0.1", "tls", ("127.0.0.1", 2443)),
        ("example.com:443", "tls", ("example.com", 443)),
        ("[::1]:2223", "tcp", ("::1", 2223)),
        ("[::1]", "tcp", ("::1", 2222)),
        ("::1", "tcp", ("::1", 2222)),
    ],
)
def test_parse_server(text: str, kind: str, expected: tuple[str, int]) -> None:
    assert parse_server(text, kind) == expected


@pytest.mark.parametrize(
    "text", ["", ":22", "h:0", "h:70000", "h:x", "[::1", "[nope]:1", "1:2:3:x", "a b:1", "a,b"]
)
def test_parse_server_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid server address"):
        parse_server(text)


def test_build_transport(tmp_path: Path) -> None:
    key = b"unused"
    tcp = build_transport(ClientOptions(server="127.0.0.1", identity=key))
    assert isinstance(tcp, TcpTransport) and tcp.describe() == "tcp://127.0.0.1:2222"
    via = build_transport(ClientOptions(server="[::1]:9", identity=key, proxy="socks5://127.0.0.1:1080"))
    assert via.describe() == "tcp://[::1]:9 via proxy"
    tls = build_transport(
        ClientOptions(server="example.com", identity=key, transport="tls", tls_insecure=True)
    )
    assert isinstance(tls, TlsTransport) and tls.describe() == "tls://example.com:2443 (sni example.com)"
    pinned = build_transport(
        ClientOptions(server="127.0.0.1:1", identity=key, transport="tls", tls_pin="ab" * 32)
    )
    assert pinned.describe() == "tls://127.0.0.1:1 (no sni)"
    bad: list[dict[str, Any]] = [
        {"tls_pin": "ab" * 32},  # tls option without tls
        {"transport": "tls", "tls_pin": "ab" * 32, "tls_insecure": True},
        {"transport": "quic"},
        {"transport": "carrier-pigeon"},
        {"proxy": "https://127.0.0.1:1"},
    ]
    for extra in bad:
        with pytest.raises(ConfigError):
            build_transport(ClientOptions(server="127.0.0.1", identity=key, **extra))


def test_options_repr_hides_key_and_proxy() -> None:
    opts = ClientOptions(
        server="h", identity=b"-----BEGIN OPENSSH PRIVATE KEY-----", proxy="socks5://u:pw@h:1"
    )
    assert "PRIVATE" not in repr(opts) and "pw" not in repr(opts)


def test_identity_path_and_bytes_agree_and_bad_keys_refused(keys: Keys, tmp_path: Path) -> None:
    path = keys.write_client_key(tmp_path / "id")
    expected = public_key_of(keys.client).blob
    assert load_identity(str(path)).public_data == expected
    assert load_identity(path).public_data == expected
    assert load_identity(keys.client_openssh).public_data == expected
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError) as info:
        load_identity(pem)
    assert str(info.value) == MSG_PEM
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    with pytest.raises(
        KeyFormatError, match=r"unsupported key type ssh-rsa \(only ssh-ed25519 is accepted\)"
    ):
        load_identity(rsa_key)
    with pytest.raises(KeyFormatError):
        SshClient(ClientOptions(server="127.0.0.1", identity=pem, insecure_host_key=True))


def test_client_needs_a_host_key_mode(keys: Keys) -> None:
    with pytest.raises(ConfigError):
        SshClient(ClientOptions(server="127.0.0.1", identity=keys.client_openssh))
    with pytest.raises(ConfigError):
        SshClient(
            ClientOptions(
                server="127.0.0.1",
                identity=keys.client_openssh,
                host_key=keys.host_fingerprint,
                insecure_host_key=True,
            )
        )


# ------------------------------------------------------------------------------------------ the connection


async def test_algorithms_user_and_channel(keys: Keys, ssh_server: TestSshServer) -> None:
    client = make_client(keys, ssh_server.port, keepalive_interval=5, keepalive_count_max=2)
    conn = await client.connect()
    try:
        assert conn.ssh.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert conn.ssh.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"
        assert conn.ssh.get_extra_info("send_compression") == "none"
        assert conn.ssh.get_extra_info("recv_compression") == "none"
        assert ssh_server.usernames == ["alknet"]
    finally:
        await conn.aclose()
    assert conn.is_closed
    custom = make_client(keys, ssh_server.port, user="deploy")
    conn = await custom.connect()
    await conn.aclose()
    assert ssh_server.usernames == ["alknet", "deploy"]


async def test_connect_timeout_covers_the_handshake(keys: Keys) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = make_client(keys, port, connect_timeout=0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError, match=r"no SSH session within 0.5 s"):
            await client.connect()
        assert loop.time() - t0 < 2.0
    finally:
        server.close()


async def test_auth_rejected_is_logged_as_error_and_retried(
    keys: Keys, ssh_server: TestSshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    stranger = Keys(host=keys.host)
    client = make_client(stranger, ssh_server.port)
    async with running_session(client, SessionOptions(socks5=None), sleep=fast_sleep(0.02)):
        async with asyncio.timeout(10):
            while len([r for r in caplog.records if r.getMessage() == "connect failed"]) < 3:
                await asyncio.sleep(0.05)
    failed = [r for r in caplog.records if r.getMessage() == "connect failed"]
    assert all(r.levelno == logging.ERROR for r in failed)
    assert [r for r in caplog.records if r.getMessage() == "reconnecting"]


# ------------------------------------------------------------------------------------------ isolation


_AUDIT: list[str] = []
_AUDIT_ON: list[bool] = []


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT_ON and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _AUDIT.append(os.fsdecode(path))


sys.addaudithook(_audit_hook)


class _FakeAgent:
    """A unix socket standing in for ssh-agent; counts connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_unix_server(handle, str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def hostile_home(tmp_path: Path, keys: Keys) -> Iterator[Path]:
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "config").write_text(
        "Host *\n    Port 1\n    User nobody\n    IdentityFile ~/.ssh/id_ed25519\n"
    )
    other = asyncssh.generate_private_key("ssh-ed25519")
    (ssh_dir / "known_hosts").write_text(
        "* " + other.export_public_key().decode() + "[127.0.0.1]:* " + other.export_public_key().decode()
    )
    (ssh_dir / "id_ed25519").write_bytes(other.export_private_key())
    (ssh_dir / "id_ed25519.pub").write_bytes(other.export_public_key())
    (ssh_dir / "ca-bundle.crt").write_text("not a certificate\n")
    (ssh_dir / "crt").mkdir()
    yield home


@pytest.fixture
async def fake_agent(tmp_path: Path) -> AsyncIterator[_FakeAgent]:
    agent = _FakeAgent(tmp_path / "agent.sock")
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def test_nothing_read_from_home_ssh_and_no_agent(
    keys: Keys,
    ssh_server: TestSshServer,
    hostile_home: Path,
    fake_agent: _FakeAgent,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HOME", str(hostile_home))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(fake_agent.path))
    ssh_dir = str(hostile_home / ".ssh")
    touched: list[str] = []
    real_access, real_stat = os.access, os.stat

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        touched.append(os.fsdecode(path))
        return real_access(path, mode, *args, **kwargs)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, (str, bytes, os.PathLike)):
            touched.append(os.fsdecode(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "stat", stat)
    assert os.path.expanduser("~/.ssh") == ssh_dir  # the hostile home is what asyncssh would look at
    _AUDIT.clear()
    _AUDIT_ON.append(True)
    try:
        client = make_client(
            keys, ssh_server.port, host_key=None, state_dir=tmp_path / "state"
        )  # TOFU: the hostile known_hosts would refuse this server if it were read
        async with running_session(client) as (session, _):
            conn = await asyncio.wait_for(session.wait_connected(), 10)
            assert conn.ssh.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
    finally:
        _AUDIT_ON.clear()
    assert ssh_server.usernames == ["alknet"]  # not "nobody" from ~/.ssh/config
    assert fake_agent.connections == 0
    seen = [p for p in _AUDIT + touched if p.startswith(ssh_dir)]
    assert seen == []
    assert (tmp_path / "state" / "known_hosts").is_file()
    assert any(p.endswith("known_hosts") for p in _AUDIT)  # the audit hook did observe file opens


async def test_ambient_proxy_variables_are_ignored(
    keys: Keys, ssh_server: TestSshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "socks5://127.0.0.1:1" if "ALL" in name.upper() else "http://127.0.0.1:1")
    conn = await make_client(keys, ssh_server.port).connect()
    await conn.aclose()


# ------------------------------------------------------------------------------------------ client --proxy


class _RecordingSocks5Proxy:
    """A SOCKS5 proxy (no auth) that records each CONNECT and connects ``localhost`` to 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str, int]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(2)
            await reader.readexactly(head[1])
            writer.write(b"\x05\x00")
            _ver, _cmd, _, atyp = await reader.readexactly(4)
            if atyp == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            elif atyp == 1:
                host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
            else:
                host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            self.requests.append((atyp, host, port))
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1" if host == "localhost" else host, port
            )
            writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")

            async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()

            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer), return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_tls_through_client_proxy_sends_the_server_name(keys: Keys, tmp_path: Path) -> None:
    contexts = ServerContexts.self_signed(tmp_path / "server-state")
    server = TestSshServer(keys, tls=contexts)
    await server.start()
    proxy = _RecordingSocks5Proxy()
    await proxy.start()
    try:
        client = make_client(
            keys,
            server.port,
            server=f"localhost:{server.port}",
            transport="tls",
            tls_pin=contexts.fingerprint,
            proxy=f"socks5://127.0.0.1:{proxy.port}",
        )
        assert client.describe() == f"tls://localhost:{server.port} (sni localhost) via proxy"
        conn = await client.connect()
        try:
            _reader, writer = await conn.open_channel("127.0.0.1", proxy.port)  # any reachable target
            writer.close()
        finally:
            await conn.aclose()
        assert proxy.requests == [(3, "localhost", server.port)]
    finally:
        await proxy.stop()
        await server.stop()
