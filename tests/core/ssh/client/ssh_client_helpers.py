"""Shared kit for the SSH client tests: keys, a plain asyncssh test server, HTTP targets, curl, SOCKS5."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.keys import PublicKey, generate_private_key, private_key_to_openssh
from alknet.core.ssh.client import ClientOptions, SshClient
from alknet.core.ssh.session import ClientSession, SessionOptions
from alknet.core.tls.context import ServerContexts
from alknet.core.transport.base import AcceptorServer, TransportAcceptor
from alknet.core.transport.tcp import TcpAcceptor
from alknet.core.transport.tls import TlsAcceptor

HTTP_BODY = b"hello through the alknet tunnel\n"


# ------------------------------------------------------------------------------------------------ keys


@dataclass
class Keys:
    client: Ed25519PrivateKey = field(default_factory=generate_private_key)
    host: asyncssh.SSHKey = field(default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))

    @property
    def client_openssh(self) -> bytes:
        return private_key_to_openssh(self.client, "test client")

    @property
    def client_asyncssh(self) -> asyncssh.SSHKey:
        return asyncssh.import_private_key(self.client_openssh)

    @property
    def host_fingerprint(self) -> str:
        return PublicKey.from_blob(self.host.public_data).fingerprint

    @property
    def host_public_line(self) -> str:
        return str(self.host.export_public_key().decode().strip())

    def write_client_key(self, path: Path) -> Path:
        path.write_bytes(self.client_openssh)
        path.chmod(0o600)
        return path

    def client_public_line(self) -> str:
        return str(self.client_asyncssh.export_public_key().decode().strip())


def new_host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


# ------------------------------------------------------------------------------------------------ server


class _Handler(asyncssh.SSHServer):
    def __init__(self, server: TestSshServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server.conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        self._server.usernames.append(username)
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        self._server.requested.append((dest_host, dest_port))
        if dest_host in self._server.denied:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding not permitted"
            )
        return self._forward(self._server.names.get(dest_host, dest_host), dest_port)

    async def _forward(self, host: str, port: int) -> Any:
        assert self._conn is not None
        try:
            _, peer = await asyncio.get_running_loop().create_connection(asyncssh.SSHForwarder, host, port)
        except ConnectionRefusedError:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection refused") from None
        except OSError:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "host unreachable") from None
        return asyncssh.SSHForwarder(peer)

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._server.requested.append((dest_path, 0))
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._server.listen_requests.append((listen_host, listen_port))
        return listen_host not in ("", "0.0.0.0", "::", "*")


class TestSshServer:
    """A plain asyncssh server over the alknet TcpAcceptor (or TlsAcceptor): forwarding allowed, user
    ``alknet`` only, a name map standing in for server-side DNS, restartable on the same port."""

    __test__ = False

    def __init__(self, keys: Keys, *, tls: ServerContexts | None = None) -> None:
        self.keys = keys
        self.host_key = keys.host
        self.tls = tls
        self.port = 0
        self.conns: set[asyncssh.SSHServerConnection] = set()
        self.usernames: list[str] = []
        self.requested: list[tuple[str, int]] = []
        self.listen_requests: list[tuple[str, int]] = []
        self.names: dict[str, str] = {}
        self.denied: set[str] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    def _make_acceptor(self) -> TransportAcceptor:
        if self.tls is not None:
            return TlsAcceptor("127.0.0.1", self.port, self.tls.ref)
        return TcpAcceptor("127.0.0.1", self.port)

    async def start(self) -> int:
        authorized = asyncssh.import_authorized_keys(self.keys.client_public_line() + "\n")
        self._acceptor = await asyncssh.listen(
            tunnel=AcceptorServer(self._make_acceptor()),
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            server_factory=lambda: _Handler(self),
            config=None,
            allow_pty=False,
        )
        self.port = self._acceptor.get_port()
        return self.port

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self.conns):
            conn.abort()
        self.conns.clear()
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------ targets


class HttpTarget:
    """A tiny HTTP/1.1 server answering every request with :data:`HTTP_BODY` (and counting connections)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(HTTP_BODY)}\r\n\r\n".encode()
                + HTTP_BODY
            )
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


class EchoTarget:
    """TCP echo server."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: no proxy variables, no agent."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("SSH_AUTH_SOCK",)}
    env.update(extra)
    return env


async def run_curl(*args: str, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        str(int(timeout)),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(timeout + 5):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def socks5_request(port: int, host: str, dport: int, *, timeout: float = 5.0) -> int:
    """A raw SOCKS5 CONNECT (ATYP domain) to the local proxy; returns the reply code."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"\x05\x01\x00")
            assert await reader.readexactly(2) == b"\x05\x00"
            name = host.encode()
            writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", dport))
            reply = await reader.readexactly(10)
            return reply[1]
        finally:
            writer.close()


async def http_via_local_port(port: int, *, timeout: float = 5.0) -> bytes:
    """GET / on 127.0.0.1:port, return the body (b"" if the connection is closed without an answer)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
        finally:
            writer.close()
    _, _, body = data.partition(b"\r\n\r\n")
    return body


# ------------------------------------------------------------------------------------------------ client


def make_client(keys: Keys, port: int, **overrides: Any) -> SshClient:
    fields: dict[str, Any] = {
        "server": f"127.0.0.1:{port}",
        "identity": keys.client_openssh,
        "host_key": keys.host_fingerprint,
    }
    fields.update(overrides)
    return SshClient(ClientOptions(**fields))


def fast_sleep(factor: float = 0.1) -> Callable[[float], Awaitable[None]]:
    """A reconnect-supervisor sleep that waits ``factor`` times the backoff delay."""

    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay * factor)

    return sleep


@contextlib.asynccontextmanager
async def running_session(
    client: SshClient, options: SessionOptions | None = None, **kwargs: Any
) -> AsyncIterator[tuple[ClientSession, asyncio.Task[Any]]]:
    """Start a session (listeners bound) and its ``run()`` in a task; close both on exit."""
    session = ClientSession(client, options or SessionOptions(socks5=("127.0.0.1", 0)), **kwargs)
    await session.start()
    task = asyncio.ensure_future(session.run())
    try:
        yield session, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await session.aclose(drain=0)


def socks5_port(session: ClientSession) -> int:
    assert session.socks5 is not None
    return session.socks5.port
