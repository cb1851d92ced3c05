"""Stealth mode: the sans-IO decision and the live listener (curl, byte dribble, GET, silence)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from alknet.core.tls.context import ServerContexts, TlsVerify
from alknet.core.transport.base import AcceptorServer, HeldProtocol, Transport, TransportKind
from alknet.core.transport.stealth import (
    NOT_FOUND_RESPONSE,
    StealthDecision,
    StealthGate,
    decide,
)
from alknet.core.transport.tls import TlsAcceptor, TlsTransport

P = TypeVar("P", bound=asyncio.BaseProtocol)


def test_not_found_bytes_are_exact() -> None:
    assert NOT_FOUND_RESPONSE == b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "eof", "timed_out", "expected"),
    [
        (b"", False, False, StealthDecision.WAIT),
        (b"S", False, False, StealthDecision.WAIT),
        (b"SSH-2.0", False, False, StealthDecision.WAIT),
        (b"SSH-2.0-", False, False, StealthDecision.SSH),
        (b"SSH-2.0-OpenSSH_9.6\r\n", False, False, StealthDecision.SSH),
        (b"SSH-2.0-", True, False, StealthDecision.SSH),
        (b"G", False, False, StealthDecision.NOT_FOUND),
        (b"GET / HTTP/1.1\r\n", False, False, StealthDecision.NOT_FOUND),
        (b"SSH-1.99-x", False, False, StealthDecision.NOT_FOUND),
        (b"SSH-2.1", False, False, StealthDecision.NOT_FOUND),
        (b"\x00", False, False, StealthDecision.NOT_FOUND),
        (b"SSH", True, False, StealthDecision.CLOSE),
        (b"", True, False, StealthDecision.CLOSE),
        (b"", False, True, StealthDecision.CLOSE),
        (b"SSH-2", False, True, StealthDecision.CLOSE),
        (b"X", False, True, StealthDecision.NOT_FOUND),
    ],
)
def test_decide(data: bytes, eof: bool, timed_out: bool, expected: StealthDecision) -> None:
    assert decide(data, eof=eof, timed_out=timed_out) is expected


@pytest.fixture
def contexts(tmp_path: Path) -> ServerContexts:
    return ServerContexts.self_signed(tmp_path / "state")


async def _stealth_server(ssh: Any, contexts: ServerContexts, timeout: float) -> tuple[Any, int]:
    acceptor = TlsAcceptor("127.0.0.1", 0, contexts.ref)
    server = await asyncssh.listen(
        tunnel=AcceptorServer(acceptor, [StealthGate(timeout)]), **ssh.server_kwargs()
    )
    return server, server.get_port()


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_gets_exactly_the_nginx_404(ssh: Any, contexts: ServerContexts) -> None:
    server, port = await _stealth_server(ssh, contexts, 5.0)
    try:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-k", "-sS", "-i", "--max-time", "10", f"https://127.0.0.1:{port}/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        assert out == NOT_FOUND_RESPONSE
        proc = await asyncio.create_subprocess_exec(
            "curl", "-k", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{port}/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert out == b"404"
        assert ssh.servers == []  # no SSH connection was ever attached for the probes
        transport = TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=contexts.fingerprint))
        async with asyncssh.connect("127.0.0.1", port, tunnel=transport, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
        assert len(ssh.servers) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_get_in_one_write_gets_404_at_once(ssh: Any, contexts: ServerContexts) -> None:
    server, port = await _stealth_server(ssh, contexts, 5.0)
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx())
        start = loop.time()
        writer.write(b"GET /")
        data = await asyncio.wait_for(reader.read(), 5)
        elapsed = loop.time() - start
        writer.close()
        assert data == NOT_FOUND_RESPONSE
        assert elapsed < 1.0  # decided at byte 1, not after 8 bytes or the timeout
    finally:
        server.close()
        await server.wait_closed()


async def test_silent_client_closed_after_timeout_with_zero_bytes(ssh: Any, contexts: ServerContexts) -> None:
    server, port = await _stealth_server(ssh, contexts, 0.5)
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx())
        start = loop.time()
        data = await asyncio.wait_for(reader.read(), 5)
        elapsed = loop.time() - start
        writer.close()
        assert data == b""
        assert 0.4 <= elapsed < 2.0
    finally:
        server.close()
        await server.wait_closed()


class _Dribble(asyncio.Transport):
    """Writes the first ``count`` bytes one at a time ``delay`` apart, then everything else in order."""

    def __init__(self, inner: asyncio.Transport, count: int, delay: float) -> None:
        super().__init__()
        self._inner = inner
        self._left = count
        self._delay = delay
        self._pending = bytearray()
        self._task: asyncio.Task[None] | None = None
        self.dribbled = bytearray()

    def write(self, data: Any) -> None:
        if self._left <= 0 and not self._pending:
            self._inner.write(data)
            return
        self._pending += data
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._left > 0 and self._pending:
            self._inner.write(bytes(self._pending[:1]))
            self.dribbled += self._pending[:1]
            del self._pending[:1]
            self._left -= 1
            await asyncio.sleep(self._delay)
        self._inner.write(bytes(self._pending))
        self._pending.clear()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()


class _DribbleTls(Transport):
    kind = TransportKind.TLS

    def __init__(self, inner: TlsTransport) -> None:
        self.inner = inner
        self.wrapped: _Dribble | None = None

    def describe(self) -> str:
        return self.inner.describe()

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str | None = None, port: int | None = None
    ) -> tuple[asyncio.Transport, P]:
        tls, held = await self.inner.create_connection(HeldProtocol)
        assert held.buffered == b""  # stealth: the server sent nothing after the handshake
        self.wrapped = _Dribble(tls, 11, 0.05)
        protocol = protocol_factory()
        tls.set_protocol(protocol)
        protocol.connection_made(self.wrapped)
        return self.wrapped, protocol

    async def aclose(self) -> None:
        return None


async def test_ssh_banner_in_one_byte_writes_is_recognised(ssh: Any, contexts: ServerContexts) -> None:
    server, port = await _stealth_server(ssh, contexts, 5.0)
    try:
        tunnel = _DribbleTls(TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=contexts.fingerprint)))
        async with asyncssh.connect(
            "127.0.0.1", port, tunnel=tunnel, client_version="x", **ssh.client_kwargs()
        ) as conn:
            assert conn.get_extra_info("server_version").startswith("SSH-2.0-")
            assert await ssh.echo(conn) == b"hello alknet"
        assert tunnel.wrapped is not None and tunnel.wrapped.dribbled == b"SSH-2.0-x\r\n"
    finally:
        server.close()
        await server.wait_closed()
