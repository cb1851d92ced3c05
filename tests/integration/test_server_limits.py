"""Per-IP limits at accept, shared listeners, reload of limits, stealth and graceful shutdown
(auth-and-config.md §8; transport-and-ssh.md §12) with real connections on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import (
    EchoServer,
    Harness,
    LogCapture,
    T,
    client_options,
    connected,
    echo_through,
    new_keypair,
    open_failure,
    run_process,
)

from alknet.core.config.dynamic import RateLimits
from alknet.core.config.reloader import ConfigReloader
from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.config.static import ListenerSpec
from alknet.core.errors import ConfigError
from alknet.core.ssh.server import SshServer, SshServerOptions
from alknet.core.tls.context import ServerContexts, TlsVerify
from alknet.core.tls.selfsigned import generate_self_signed, pem_fingerprint
from alknet.core.transport.base import TransportInfo, TransportKind
from alknet.core.transport.tls import TlsPinMismatch, TlsTransport

REJECTED = 'level=INFO msg="connection rejected" remote_addr=127.0.0.1 reason=too_many_connections'


async def _raw(port: int, host: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port), T)


async def _banner(reader: asyncio.StreamReader) -> bytes:
    """The server's first line: ``SSH-2.0-...`` when admitted, ``b""`` when closed at once."""
    return await asyncio.wait_for(reader.readline(), T)


async def _tls_first_bytes(port: int) -> bytes:
    """Connect to a tls listener and send nothing: an admitted connection waits silently (the server never
    speaks first), a refused one is closed at once without a byte."""
    reader, writer = await _raw(port)
    try:
        return await asyncio.wait_for(reader.read(1), 1.0)
    except TimeoutError:
        return b"<open>"
    finally:
        writer.close()


async def _until(predicate: object, timeout: float = T) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_third_connection_from_one_ip_is_closed_at_once(tmp_path: Path) -> None:
    extra = [ListenerSpec(kind="tcp", host="::1", port=0)]
    with LogCapture() as logs:
        async with Harness(
            tmp_path, rate_limits=RateLimits(max_connections_per_ip=2), extra_specs=extra
        ) as h:
            first, second = await _raw(h.port()), await _raw(h.port())
            assert (await _banner(first[0])).startswith(b"SSH-2.0-")
            assert (await _banner(second[0])).startswith(b"SSH-2.0-")
            third = await _raw(h.port())
            assert await _banner(third[0]) == b""  # closed without an SSH banner
            assert logs.lines.count(REJECTED) == 1
            v6 = await _raw(h.port(host="::1"), "::1")  # ::1 is counted on its own
            assert (await _banner(v6[0])).startswith(b"SSH-2.0-")
            first[1].close()
            await _until(lambda: h.srv.limiter.count("127.0.0.1") == 1)
            fourth = await _raw(h.port())
            assert (await _banner(fourth[0])).startswith(b"SSH-2.0-")
            for _, writer in (second, third, v6, fourth):
                writer.close()
            await _until(lambda: len(h.srv.limiter) == 0)
    assert len(logs.matching('msg="connection opened"')) == 4
    assert len(logs.matching('msg="connection closed"')) == 4
    assert logs.lines.count(REJECTED) == 1


async def test_tcp_and_tls_listeners_share_the_count_and_reload_lowers_it(tmp_path: Path) -> None:
    key = new_keypair()
    with LogCapture() as logs:
        async with (
            EchoServer() as echo,
            Harness(
                tmp_path,
                authorized_keys=key.line + "\n",
                rate_limits=RateLimits(max_connections_per_ip=2),
                kinds=("tcp", "tls"),
            ) as h,
        ):
            conn_tcp = await h.connect(key)
            conn_tls = await h.connect(key, kind="tls")
            assert await _tls_first_bytes(h.port("tls")) == b""  # closed before any TLS byte
            third = await _raw(h.port())
            assert await _banner(third[0]) == b""
            assert logs.lines.count(REJECTED) == 2
            conn_tls.close()
            await asyncio.wait_for(conn_tls.wait_closed(), T)
            await _until(lambda: h.srv.limiter.count("127.0.0.1") == 1)
            conn_tls = await h.connect(key, kind="tls")
            # reload 2 -> 1: both open connections stay up, the next one is refused
            assert h.reloader is not None
            current = h.reloader.ref.load()
            await h.reloader.reload_all(
                current.__class__(current.auth, current.forwarding, RateLimits(1, 10))
            )
            assert await echo_through(conn_tcp, "127.0.0.1", echo.port) == b"ping"
            assert await echo_through(conn_tls, "127.0.0.1", echo.port) == b"ping"
            assert await _tls_first_bytes(h.port("tls")) == b""
            assert logs.lines.count(REJECTED) == 3
            conn_tcp.close()
            conn_tls.close()


async def test_unlimited_accepts_fifty_and_leaves_no_entry(tmp_path: Path) -> None:
    async with Harness(tmp_path, rate_limits=RateLimits(max_connections_per_ip=0)) as h:
        streams = await asyncio.gather(*(_raw(h.port()) for _ in range(50)))
        banners = await asyncio.gather(*(_banner(r) for r, _ in streams))
        assert all(b.startswith(b"SSH-2.0-") for b in banners)
        assert h.srv.limiter.count("127.0.0.1") == 50
        for _, writer in streams:
            writer.close()
        await _until(lambda: len(h.srv.limiter) == 0)


async def test_stealth_probe_logs_nothing_ssh_logs_opened(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    key = new_keypair()
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=key.line + "\n", kinds=("tls",), stealth=True) as h:
            _, out, _ = await run_process(
                ["curl", "-sk", "--max-time", "10", "-i", f"https://127.0.0.1:{h.port('tls')}/"]
            )
            assert out.startswith("HTTP/1.1 404 Not Found")
            assert 'msg="connection opened"' not in logs.text
            async with connected(h, key, kind="tls"):
                pass
    assert logs.matching('msg="connection opened"') == [
        'level=INFO msg="connection opened" remote_addr=127.0.0.1 transport=tls'
    ]


# -------------------------------------------------------------------------------------------- shutdown


class _Recorder(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_shutdown_with_an_active_stream_disconnects_within_3s(tmp_path: Path) -> None:
    key = new_keypair()
    recorder = _Recorder()
    async with EchoServer() as echo:
        h = Harness(tmp_path, authorized_keys=key.line + "\n")
        await h.__aenter__()
        conn = await h.connect(key, client_factory=lambda: recorder)
        port = h.port()
        reader, writer = await asyncio.wait_for(conn.open_connection("127.0.0.1", echo.port), T)
        writer.write(b"busy")
        assert await asyncio.wait_for(reader.readexactly(4), T) == b"busy"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(h.srv.close(drain=2.0), 5)
        elapsed = loop.time() - start
        await asyncio.wait_for(conn.wait_closed(), T)
        assert 1.5 <= elapsed < 3.0, elapsed
        # asyncssh reports a received MSG_DISCONNECT with code 11 (by application) as a clean close (None);
        # a connection dropped without a disconnect message would be ConnectionLost
        assert recorder.lost == [None]
        with pytest.raises(OSError):
            await _raw(port)


async def test_shutdown_waits_for_channels_that_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    key = new_keypair()
    async with EchoServer() as echo:
        h = Harness(tmp_path, authorized_keys=key.line + "\n")
        await h.__aenter__()
        conn = await h.connect(key)
        reader, writer = await asyncio.wait_for(conn.open_connection("127.0.0.1", echo.port), T)
        port = h.port()
        closing = asyncio.ensure_future(h.srv.close(drain=5.0))
        await asyncio.sleep(0.2)
        failure = await open_failure(conn, "127.0.0.1", echo.port)
        assert (failure.code, failure.reason) == (asyncssh.OPEN_RESOURCE_SHORTAGE, "resource shortage")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), T) == b"last words"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(closing, 5)
        assert loop.time() - start < 2.0
        await asyncio.wait_for(conn.wait_closed(), T)


async def test_second_close_skips_the_drain(tmp_path: Path) -> None:
    key = new_keypair()
    async with EchoServer() as echo:
        h = Harness(tmp_path, authorized_keys=key.line + "\n")
        await h.__aenter__()
        conn = await h.connect(key)
        await asyncio.wait_for(conn.open_connection("127.0.0.1", echo.port), T)
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = asyncio.ensure_future(h.srv.close(drain=30.0))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(h.srv.close(drain=0), 5)
        await asyncio.wait_for(first, 5)
        assert loop.time() - start < 3.0
        await asyncio.wait_for(conn.wait_closed(), T)
        await h.srv.close()  # idempotent


async def test_ipv4_mapped_peer_counts_against_ipv4(tmp_path: Path) -> None:
    """The admit hook keys ``::ffff:127.0.0.1`` as 127.0.0.1 (a tcp listener binds IPv6 sockets V6ONLY, so the
    hook is fed the mapped address directly)."""
    async with Harness(tmp_path, rate_limits=RateLimits(max_connections_per_ip=2)) as h:
        first, second = await _raw(h.port()), await _raw(h.port())
        await _banner(first[0])
        await _banner(second[0])
        mapped = TransportInfo(TransportKind.TCP, ("::ffff:127.0.0.1", 40000), ("::", 2222))
        assert h.srv.admit(mapped) is None
        other = TransportInfo(TransportKind.TCP, ("::1", 40000), ("::1", 2222))
        release = h.srv.admit(other)
        assert release is not None
        release()
        release()  # a release runs once
        assert h.srv.limiter.count("::1") == 0 and h.srv.limiter.count("127.0.0.1") == 2
        for _, writer in (first, second):
            writer.close()


async def test_keepalive_drops_a_silent_client(tmp_path: Path) -> None:
    key = new_keypair()
    with LogCapture() as logs:
        async with Harness(
            tmp_path, authorized_keys=key.line + "\n", keepalive_interval=0.2, keepalive_count=3
        ) as h:
            conn = await h.connect(key)
            conn._transport.pause_reading()  # type: ignore[attr-defined]  # the client stops answering
            loop = asyncio.get_running_loop()
            start = loop.time()
            await logs.wait_for('msg="connection closed"', timeout=5)
            assert loop.time() - start < 2.0
            conn.abort()


async def test_reload_swaps_the_manual_tls_certificate(tmp_path: Path) -> None:
    key = new_keypair()
    cert, tls_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pem1, key1 = generate_self_signed()
    cert.write_bytes(pem1)
    tls_key.write_bytes(key1)
    (tmp_path / "authorized_keys").write_text(key.line + "\n")
    config = tmp_path / "alknet.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[auth]\nauthorized_keys = "authorized_keys"\n'
        '[[listeners]]\ntransport = "tls"\nlisten = "127.0.0.1:0"\n'
        '[listeners.tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
    )
    sources = ConfigSources(Overrides(config=config), env={})
    loaded = sources.load()
    assert loaded.static is not None
    contexts = ServerContexts.from_files(cert, tls_key)
    server = SshServer(
        SshServerOptions.from_static(loaded.static, host_key=new_keypair().key, tls={0: contexts}),
        ConfigReloader.from_loaded(loaded, sources),
    )

    async def login(pin: str) -> asyncssh.SSHClientConnection:
        port = int(server.listen_addrs[0].rpartition(":")[2])
        transport = TlsTransport("127.0.0.1", port, verify=TlsVerify(pin=pin))
        return await asyncio.wait_for(
            asyncssh.connect(
                "127.0.0.1", port, tunnel=transport, **client_options(client_keys=[key.ssh_key])
            ),
            T,
        )

    with LogCapture() as logs:
        async with EchoServer() as echo, server:
            old = await login(pem_fingerprint(pem1))
            pem2, key2 = generate_self_signed()
            cert.write_bytes(pem2)
            tls_key.write_bytes(key2)
            await server.reload()
            new = await login(pem_fingerprint(pem2))
            with pytest.raises(TlsPinMismatch):
                await login(pem_fingerprint(pem1))
            assert await echo_through(old, "127.0.0.1", echo.port) == b"ping"  # the old session keeps working
            cert.write_bytes(generate_self_signed()[0])  # a certificate that does not match the key
            with pytest.raises(ConfigError):
                await server.reload()
            assert any('msg="config reload" result=error' in line for line in logs.lines)
            again = await login(pem_fingerprint(pem2))  # the old certificate stays in use
            for conn in (old, new, again):
                conn.close()
    assert logs.matching('msg="tls certificate" source=manual') == [
        f'level=INFO msg="tls certificate" source=manual sha256={pem_fingerprint(pem2)}'
    ]
