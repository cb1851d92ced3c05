"""ClientHello parser on ClientHellos captured live from Python ssl and openssl s_client, plus bad input."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alknet.core.tls.clienthello import (
    MAX_RECORD,
    ClientHelloInfo,
    parse_client_hello,
    record_bytes_needed,
)


async def _capture(client: str, sni: str | None, alpn: list[str]) -> bytes:
    """Run a raw socket server on loopback, let ``client`` connect, return its first TLS record."""
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
    proc: asyncio.subprocess.Process | None = None
    pytask: asyncio.Task[None] | None = None
    if client == "openssl":
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
        args += ["-servername", sni] if sni else ["-noservername"]
        if alpn:
            args += ["-alpn", ",".join(alpn)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)

        async def connect() -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)

        pytask = loop.create_task(connect())
    try:
        conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), 15)
        data = b""
        with conn:
            while True:
                need = record_bytes_needed(data)
                if need == 0 and data:
                    break
                chunk = await asyncio.wait_for(loop.sock_recv(conn, need), 15)
                assert chunk
                data += chunk
        return data
    finally:
        lsock.close()
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        if pytask is not None:
            await asyncio.wait_for(pytask, 15)


@pytest.mark.parametrize(
    ("sni", "alpn"),
    [
        ("alknet.test", ["http/1.1"]),
        ("Example.COM", ["acme-tls/1"]),
        (None, []),
        ("x.test", ["h2", "http/1.1"]),
    ],
)
async def test_python_ssl_client_hello(sni: str | None, alpn: list[str]) -> None:
    data = await _capture("python", sni, alpn)
    assert data[0] == 0x16
    assert parse_client_hello(data) == ClientHelloInfo(sni.lower() if sni else None, tuple(alpn))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize(
    ("sni", "alpn"), [("alknet.test", ["acme-tls/1"]), ("a.b.example", ["h2", "http/1.1"]), (None, [])]
)
async def test_openssl_s_client_hello(sni: str | None, alpn: list[str]) -> None:
    data = await _capture("openssl", sni, alpn)
    assert parse_client_hello(data) == ClientHelloInfo(sni, tuple(alpn))


async def test_truncated_and_garbage_are_normal_path() -> None:
    data = await _capture("python", "alknet.test", ["http/1.1"])
    assert parse_client_hello(data) is not None
    for cut in range(len(data)):
        assert parse_client_hello(data[:cut]) is None
    assert record_bytes_needed(data[:3]) == 2
    assert record_bytes_needed(data[:5]) == len(data) - 5
    assert record_bytes_needed(data) == 0
    for garbage in (b"", b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-x\r\n", b"\x16\x03\x01\x00\x00", b"\x16\x02",
                    b"\x17\x03\x03\x00\x05hello", b"\x16\x03\x01\x40\x01" + b"\x00" * 16385,
                    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"):  # fmt: skip
        assert parse_client_hello(garbage) is None
    # a body byte flipped in the length fields must not crash and must not misreport
    for i in range(5, min(len(data), 120)):
        mutated = bytearray(data)
        mutated[i] ^= 0xFF
        result = parse_client_hello(bytes(mutated))
        assert result is None or isinstance(result, ClientHelloInfo)
    # a non-ASCII server name is reported as no SNI
    marker = data.find(b"alknet.test")
    weird = data[:marker] + b"\xfflknet.test" + data[marker + 11 :]
    assert parse_client_hello(weird) == ClientHelloInfo(None, ("http/1.1",))


def test_record_bounds() -> None:
    assert MAX_RECORD == 16389
    assert record_bytes_needed(b"") == 1
    assert record_bytes_needed(b"\x16") == 4
    assert record_bytes_needed(b"\x16\x03\x01\x40\x00") == 16384
    assert record_bytes_needed(b"\x16\x03\x01\x40\x01") == 0  # oversized: not TLS, normal path
    assert record_bytes_needed(b"G") == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    for candidate in (b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data, data):
        result = parse_client_hello(candidate)
        assert result is None or isinstance(result, ClientHelloInfo)
        assert record_bytes_needed(candidate) >= 0
