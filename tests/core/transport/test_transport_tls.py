"""tls: asyncssh over TlsAcceptor/TlsTransport, verification modes, garbage clients, openssl, hot swap."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from alknet.core.config.atomic import AtomicRef
from alknet.core.errors import ConfigError
from alknet.core.tls.context import ServerContexts, TlsVerify
from alknet.core.tls.selfsigned import cert_fingerprint
from alknet.core.transport.base import (
    TRANSPORT_INFO_KEY,
    AcceptorServer,
    HeldProtocol,
    TransportInfo,
    TransportKind,
    held_protocol,
)
from alknet.core.transport.tcp import proxy_dial
from alknet.core.transport.tls import (
    SELF_SIGNED_MESSAGE,
    TlsAcceptor,
    TlsPinMismatch,
    TlsTransport,
    TlsVerificationError,
)


async def _listen(ssh: Any, acceptor: TlsAcceptor, gates: list[Any] | None = None) -> Any:
    return await asyncssh.listen(tunnel=AcceptorServer(acceptor, gates or []), **ssh.server_kwargs())


@pytest.fixture
def contexts(tmp_path: Path) -> ServerContexts:
    return ServerContexts.self_signed(tmp_path / "state")


async def test_tls_pin_carries_ssh_session(ssh: Any, contexts: ServerContexts) -> None:
    seen: list[TransportInfo] = []

    async def gate(transport: asyncio.Transport, info: TransportInfo) -> bool:
        seen.append(info)
        return True

    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref), [gate])
    port = server.get_port()
    pin = ":".join(contexts.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    try:
        transport = TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=pin), server_name="alknet")
        assert transport.describe() == f"tls://127.0.0.1:{port} (sni alknet)"
        async with asyncssh.connect("127.0.0.1", port, tunnel=transport, **ssh.client_kwargs()) as conn:
            info = conn.get_extra_info(TRANSPORT_INFO_KEY)
            assert info.kind is TransportKind.TLS and info.alpn == "http/1.1"
            assert await ssh.echo(conn, b"z" * 500_000) == b"z" * 500_000
    finally:
        server.close()
        await server.wait_closed()
    assert seen[0].server_name == "alknet" and seen[0].alpn == "http/1.1"
    assert seen[0].listener == "tls://127.0.0.1:0"
    assert ssh.servers[0].info == seen[0]  # the SSH server sees the same TransportInfo


async def test_self_signed_without_pin_gives_the_exact_message(ssh: Any, contexts: ServerContexts) -> None:
    acceptor = TlsAcceptor("127.0.0.1", 0, contexts.ref)
    server = await _listen(ssh, acceptor)
    port = server.get_port()
    try:
        with pytest.raises(TlsVerificationError) as err:
            await asyncssh.connect(
                "127.0.0.1", port, tunnel=TlsTransport("127.0.0.1", port), **ssh.client_kwargs()
            )
        assert str(err.value) == SELF_SIGNED_MESSAGE
        assert str(err.value) == (
            "TLS certificate verification failed: self-signed certificate "
            "(use --tls-pin, --tls-ca or --tls-insecure)"
        )
    finally:
        server.close()
        await server.wait_closed()


async def test_wrong_pin_closes_before_any_ssh_byte(contexts: ServerContexts) -> None:
    acceptor = TlsAcceptor("127.0.0.1", 0, contexts.ref)
    await acceptor.start()
    port = acceptor.ports[0]
    wrong = "ab" * 32
    made: list[int] = []

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(1)
            assert isinstance(transport, asyncio.Transport)
            transport.write(b"SSH-2.0-should-never-be-sent\r\n")

    try:
        client = asyncio.create_task(
            TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=wrong)).create_connection(Conn)
        )
        transport, _ = await asyncio.wait_for(acceptor.accept(), 10)
        held = held_protocol(transport)
        assert isinstance(held, HeldProtocol)
        with pytest.raises(TlsPinMismatch) as err:
            await client
        assert str(err.value) == f"TLS certificate pin mismatch: expected {wrong}, got {contexts.fingerprint}"
        assert made == []
        for _ in range(200):
            if held.lost or held.eof:
                break
            await asyncio.sleep(0.01)
        assert (held.lost or held.eof) and held.buffered == b""  # not one SSH byte arrived
    finally:
        await acceptor.aclose()


async def test_ca_mode_with_test_ca(ssh: Any, pki: Any) -> None:
    ca_files, ca_cert, ca_key = pki.issue(("Test CA",), ips=(), is_ca=True)
    leaf, _, _ = pki.issue(("alknet.test",), ca=(ca_cert, ca_key))
    contexts = ServerContexts.from_files(leaf.cert, leaf.key)
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()
    try:
        good = TlsTransport("127.0.0.1", port, verify=TlsVerify(ca=ca_files.cert), server_name="alknet.test")
        async with asyncssh.connect("alknet.test", port, tunnel=good, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
        by_ip = TlsTransport("127.0.0.1", port, verify=TlsVerify(ca=ca_files.cert))
        assert by_ip.sni is None
        async with asyncssh.connect("127.0.0.1", port, tunnel=by_ip, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
        wrong_name = TlsTransport(
            "127.0.0.1", port, verify=TlsVerify(ca=ca_files.cert), server_name="other.test"
        )
        with pytest.raises(TlsVerificationError, match=r"^TLS certificate verification failed: "):
            await asyncssh.connect("127.0.0.1", port, tunnel=wrong_name, **ssh.client_kwargs())
        system = TlsTransport("127.0.0.1", port, server_name="alknet.test")  # system trust store
        with pytest.raises(TlsVerificationError, match=r"^TLS certificate verification failed: "):
            await asyncssh.connect("127.0.0.1", port, tunnel=system, **ssh.client_kwargs())
    finally:
        server.close()
        await server.wait_closed()


async def test_insecure_mode_warns(
    ssh: Any, contexts: ServerContexts, caplog: pytest.LogCaptureFixture
) -> None:
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()
    try:
        transport = TlsTransport("127.0.0.1", port, verify=TlsVerify(insecure=True))
        async with asyncssh.connect("127.0.0.1", port, tunnel=transport, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
    finally:
        server.close()
        await server.wait_closed()
    assert any(r.levelname == "WARNING" and "--tls-insecure" in r.getMessage() for r in caplog.records)


def test_verify_modes_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tls-pin cannot be combined"):
        TlsVerify(pin="ab" * 32, insecure=True)
    with pytest.raises(ConfigError, match="--tls-pin cannot be combined"):
        TlsVerify(pin="ab" * 32, ca=tmp_path)
    with pytest.raises(ConfigError, match="--tls-ca cannot be combined"):
        TlsVerify(ca=tmp_path, insecure=True)
    with pytest.raises(ConfigError, match="64 hex"):
        TlsVerify(pin="abc")


async def test_garbage_client_does_not_stop_listener(
    ssh: Any, contexts: ServerContexts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()
    try:
        for garbage in (
            b"GET / HTTP/1.0\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello" + b"\x00" * 50,
            b"SSH-2.0-x\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            await asyncio.wait_for(reader.read(), 15)
            writer.close()
        # a client that connects and closes at once
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        transport = TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=contexts.fingerprint))
        async with asyncssh.connect("127.0.0.1", port, tunnel=transport, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
    finally:
        server.close()
        await server.wait_closed()
    assert len(ssh.servers) == 1  # none of the bad clients reached SSH
    dropped = [r for r in caplog.records if r.name == "alknet.transport"]
    assert len(dropped) >= 3 and all(r.levelno == logging.DEBUG for r in dropped)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_admit_refusal_before_any_tls_byte(contexts: ServerContexts) -> None:
    acceptor = TlsAcceptor("127.0.0.1", 0, contexts.ref, admit=lambda info: None)
    await acceptor.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", acceptor.ports[0])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # no ClientHello sent: the server must close without writing a single byte
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await acceptor.aclose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_openssl_s_client_completes_handshake(contexts: ServerContexts) -> None:
    acceptor = TlsAcceptor("127.0.0.1", 0, contexts.ref)
    await acceptor.start()
    port = acceptor.ports[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        transport, info = await asyncio.wait_for(acceptor.accept(), 15)
        assert info.kind is TransportKind.TLS
        transport.close()
        out, _ = await asyncio.wait_for(proc.communicate(b""), 15)
    finally:
        await acceptor.aclose()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "BEGIN CERTIFICATE" in text
    assert "CN = alknet" in text or "CN=alknet" in text


async def test_hot_swap_new_connection_sees_new_cert_old_session_survives(ssh: Any, pki: Any) -> None:
    first, _, _ = pki.issue(("alknet.test",))
    second, _, _ = pki.issue(("alknet.test",))
    live_cert, live_key = pki.root / "live.pem", pki.root / "live.key"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    contexts = ServerContexts.from_files(live_cert, live_key)
    assert contexts.fingerprint == cert_fingerprint(first.der)
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()
    try:
        old = await asyncssh.connect(
            "127.0.0.1",
            port,
            tunnel=TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=cert_fingerprint(first.der))),
            **ssh.client_kwargs(),
        )
        # a reload with a mismatched key keeps the old certificate
        live_cert.write_bytes(second.cert.read_bytes())
        with pytest.raises(ConfigError, match="does not match"):
            contexts.reload()
        assert contexts.fingerprint == cert_fingerprint(first.der)
        live_key.write_bytes(second.key.read_bytes())
        loaded = contexts.reload()
        assert loaded.fingerprint == cert_fingerprint(second.der) == contexts.fingerprint
        with pytest.raises(TlsPinMismatch):
            await asyncssh.connect(
                "127.0.0.1",
                port,
                tunnel=TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=cert_fingerprint(first.der))),
                **ssh.client_kwargs(),
            )
        new = await asyncssh.connect(
            "127.0.0.1",
            port,
            tunnel=TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=cert_fingerprint(second.der))),
            **ssh.client_kwargs(),
        )
        assert await ssh.echo(old, b"old session") == b"old session"
        assert await ssh.echo(new, b"new session") == b"new session"
        old.close()
        new.close()
        await old.wait_closed()
        await new.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_context_selector_and_acme_alpn_never_reach_accept(contexts: ServerContexts) -> None:
    seen: list[Any] = []

    def select(hello: Any) -> ssl.SSLContext | None:
        seen.append(hello)
        if hello is not None and hello.server_name == "refused.test":
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*_self_signed_paths(contexts))
        ctx.set_alpn_protocols(["acme-tls/1", "http/1.1"])
        return ctx

    acceptor = TlsAcceptor("127.0.0.1", 0, AtomicRef(contexts.current.context), select=select)
    await acceptor.start()
    port = acceptor.ports[0]
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    try:
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="refused.test")
        client_ctx.set_alpn_protocols(["acme-tls/1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="alknet.test"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "acme-tls/1"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(acceptor.accept(), 0.3)
    finally:
        await acceptor.aclose()
    assert [h.server_name for h in seen] == ["refused.test", "alknet.test"]
    assert seen[1].alpn == ("acme-tls/1",)


def _self_signed_paths(contexts: ServerContexts) -> tuple[Path, Path]:
    assert contexts.current.cert_path is not None and contexts.current.key_path is not None
    return contexts.current.cert_path, contexts.current.key_path


async def _socks5_server(seen: list[tuple[str, int]], target_port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, n = await reader.readexactly(2)
        await reader.readexactly(n)
        writer.write(b"\x05\x00")
        _, cmd, _, atyp = await reader.readexactly(4)
        assert cmd == 1 and atyp == 3
        name = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        port = int.from_bytes(await reader.readexactly(2), "big")
        seen.append((name, port))
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00")

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            finally:
                w.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer), return_exceptions=True)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_tls_through_client_proxy(ssh: Any, contexts: ServerContexts) -> None:
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()
    seen: list[tuple[str, int]] = []
    proxy = await _socks5_server(seen, port)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        transport = TlsTransport(
            "ssh.alknet.invalid",
            443,
            verify=TlsVerify(pin=contexts.fingerprint),
            dial=proxy_dial(f"socks5://127.0.0.1:{proxy_port}"),
        )
        assert transport.describe() == "tls://ssh.alknet.invalid:443 (sni ssh.alknet.invalid) via proxy"
        async with asyncssh.connect(
            "ssh.alknet.invalid", 443, tunnel=transport, **ssh.client_kwargs()
        ) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
    finally:
        proxy.close()
        server.close()
        await server.wait_closed()
    assert seen == [("ssh.alknet.invalid", 443)]


async def test_tls_over_a_stream_dialler(ssh: Any, contexts: ServerContexts) -> None:
    """A dialler that returns asyncio streams (like ``open_via_proxy``): TLS runs over the stream bridge."""
    server = await _listen(ssh, TlsAcceptor("127.0.0.1", 0, contexts.ref))
    port = server.get_port()

    async def dial(host: str, p: int, timeout: float) -> Any:
        return await asyncio.open_connection("127.0.0.1", port)

    try:
        transport = TlsTransport("tunnel.invalid", 443, verify=TlsVerify(pin=contexts.fingerprint), dial=dial)
        async with asyncssh.connect("tunnel.invalid", 443, tunnel=transport, **ssh.client_kwargs()) as conn:
            assert conn.get_extra_info(TRANSPORT_INFO_KEY).server_name == "tunnel.invalid"
            assert await ssh.echo(conn, b"s" * 400_000) == b"s" * 400_000
    finally:
        server.close()
        await server.wait_closed()
    assert ssh.servers[0].info is not None and ssh.servers[0].info.server_name == "tunnel.invalid"
