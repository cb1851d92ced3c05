"""Stealth mode with stock tools against ``alknet serve --listen tls://127.0.0.1:<port> --stealth`` run as a
real process (transport-and-ssh.md §4, §12).

- ``curl -k`` (and a raw TLS socket) get exactly ``HTTP/1.1 404 Not Found\\r\\nServer: nginx\\r\\n\\r\\n``; no
  ``connection opened`` line is logged for them.
- Stock ``ssh`` through ``ProxyCommand='openssl s_client -quiet -connect ...'`` logs in and forwards, and so
  does ``alknet connect --transport tls --tls-pin``, on the same port.
- A client that completes TLS and then says nothing is closed at the peek timeout (``--stealth-timeout 0.5``)
  without a single application byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from proc_kit import ALKNET, Proc, clean_env
from ssh_server_kit import free_port, new_keypair

from alknet.core.auth.keys import write_keypair

pytestmark = pytest.mark.timeout(120)

NGINX_404 = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n"
BODY = b"behind the stealth listener\n"


class Stealth:
    """``alknet serve`` with one stealth tls listener on a free loopback port."""

    def __init__(self, proc: Proc, port: int, fingerprint: str, pin: str) -> None:
        self.proc, self.port, self.fingerprint, self.pin = proc, port, fingerprint, pin


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.running:
                with contextlib.suppress(Exception):
                    await proc.stop(timeout=5)


async def start_stealth(tmp: Path, procs: list[Proc], authorized: str = "", timeout: str = "0.5") -> Stealth:
    home = tmp / "server"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "authorized_keys").write_text(authorized)
    (home / "authorized_keys").chmod(0o600)
    port = free_port()
    proc = Proc(
        [
            *ALKNET,
            "serve",
            "--log-time",
            "never",
            "--listen",
            f"tls://127.0.0.1:{port}",
            "--stealth",
            "--stealth-timeout",
            timeout,
        ],
        clean_env(home, keep_agent=False),
    )
    procs.append(proc)
    await proc.start()
    await proc.wait_line('msg="server ready"')
    banner = "\n".join(proc.out)
    fp = re.search(r"host key    (SHA256:\S+)", banner)
    pin = re.search(rf"listening   tls 127\.0\.0\.1:{port}   sha256 ([0-9a-f]{{64}})", banner)
    assert fp and pin, banner
    return Stealth(proc, port, fp.group(1), pin.group(1))


def _tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _raw_exchange(port: int, send: bytes) -> tuple[bytes, float]:
    """TLS to the port, send ``send`` (may be empty), read until the server closes; (bytes, seconds)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _tls_client().wrap_socket(raw) as tls,
    ):
        start = time.monotonic()
        if send:
            tls.sendall(send)
        received = b""
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while chunk := tls.recv(4096):
                received += chunk
        return received, time.monotonic() - start


async def _curl(*args: str) -> tuple[int, bytes, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "--max-time",
        "10",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


@contextlib.asynccontextmanager
async def web() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def _page_at(port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes, str] = (0, b"", "")
    while time.monotonic() < deadline:
        assert proc.running, proc.stderr
        last = await _curl("--noproxy", "*", f"http://127.0.0.1:{port}/")
        if last[:2] == (0, BODY):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no page at {port}: {last}")


# ------------------------------------------------------------------------------------------------ tests


async def test_curl_and_raw_tls_get_exactly_the_nginx_404(tmp_path: Path, procs: list[Proc]) -> None:
    server = await start_stealth(tmp_path, procs)
    rc, out, err = await _curl("-k", "-i", f"https://127.0.0.1:{server.port}/")
    assert (rc, out) == (0, NGINX_404), err
    rc, out, err = await _curl(
        "-k", "-i", "-X", "POST", "-d", "x=1", f"https://127.0.0.1:{server.port}/login"
    )
    assert (rc, out) == (0, NGINX_404), err

    for probe in (
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"\x16\x03\x01garbage",
        b"SSH-1.99-old\r\n",
    ):
        received, elapsed = await asyncio.to_thread(_raw_exchange, server.port, probe)
        assert received == NGINX_404, probe
        assert elapsed < 2.0  # a mismatch is answered at once, without waiting for the peek timeout
    await asyncio.sleep(0.3)
    assert server.proc.running
    assert server.proc.matching('msg="connection opened"') == []  # probes are not SSH connections
    assert await server.proc.stop() == 0


async def test_silent_client_is_dropped_at_the_peek_timeout(tmp_path: Path, procs: list[Proc]) -> None:
    server = await start_stealth(tmp_path, procs, timeout="0.5")
    received, elapsed = await asyncio.to_thread(_raw_exchange, server.port, b"")
    assert received == b""  # not a byte: no SSH banner, no 404
    assert 0.4 <= elapsed < 3.0, elapsed
    # the listener still answers the next client
    received, _ = await asyncio.to_thread(_raw_exchange, server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert received == NGINX_404
    assert await server.proc.stop() == 0


@pytest.mark.skipif(
    shutil.which("ssh") is None, reason="ssh (Debian package openssh-client) is not installed"
)
async def test_stock_ssh_via_openssl_proxycommand_and_alknet_connect(
    tmp_path: Path, procs: list[Proc]
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key = new_keypair()
    path = key.write(tmp_path, "id_ed25519")
    server = await start_stealth(tmp_path, procs, authorized=key.line + "\n", timeout="5")
    async with web() as page:
        lport = free_port()
        ssh = Proc(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-o",
                f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                f"ProxyCommand=openssl s_client -quiet -connect 127.0.0.1:{server.port}",
                "-i",
                str(path),
                "-l",
                "alknet",
                "-N",
                "-L",
                f"127.0.0.1:{lport}:127.0.0.1:{page}",
                "stealth-host",
            ]
        )
        procs.append(ssh)
        await ssh.start()
        await _page_at(lport, ssh)
        assert "stealth-host" in (tmp_path / "known_hosts").read_text()

        home = tmp_path / "client"
        home.mkdir(mode=0o700)
        write_keypair(home / "id_ed25519", key.key, "client")
        client = Proc(
            [
                *ALKNET,
                "connect",
                "--log-time",
                "never",
                "--server",
                f"127.0.0.1:{server.port}",
                "--transport",
                "tls",
                "--tls-pin",
                server.pin,
                "--host-key",
                server.fingerprint,
                "--no-socks5",
                "-L",
                f"0:127.0.0.1:{page}",
            ],
            clean_env(home, keep_agent=False),
        )
        procs.append(client)
        await client.start()
        await client.wait_line('msg="connected"')
        local = int(client.matching('msg="forward listening"')[0].rpartition(":")[2])
        await _page_at(local, client)

        # a probe in between is still answered like nginx
        rc, out, _ = await _curl("-k", "-i", f"https://127.0.0.1:{server.port}/")
        assert (rc, out) == (0, NGINX_404)
        assert await client.stop() == 0
        await ssh.stop()
    assert await server.proc.stop() == 0
    opened = server.proc.matching('msg="connection opened"')
    assert len(opened) == 2 and all("transport=tls" in line for line in opened)
    assert len(server.proc.matching(f"key_fingerprint={key.fingerprint} result=accept")) == 2
