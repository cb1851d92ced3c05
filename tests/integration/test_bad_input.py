"""Bad input against the real processes (transport-and-ssh.md §7, §13, §14; cli.md §1, §4, §12): each is a
clean error, and the server, the client and an established SOCKS5 stream all stay up.

- Garbage instead of an SSH banner on the server's port: only that connection is dropped.
- Garbage SOCKS5 greetings and truncated SOCKS5 requests on ``alknet connect``'s SOCKS5 port: the answers of
  RFC 1928 (``05 FF``, ``0x07``, ``0x08``) or a silent close; the listener keeps serving.
- Bad forward specs: exit 2 with one line naming the spec. Bad TOML: exit 2 naming the key. Bad TOML on
  SIGHUP: ``config reload result=error``, the running configuration is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_kit import ALKNET, Proc, alknet
from proc_kit import clean_env as _env
from ssh_server_kit import KeyPair, new_keypair

from alknet.cli.main import main
from alknet.core.auth.keys import write_keypair

pytestmark = pytest.mark.timeout(120)


@dataclass
class Pair:
    """``alknet serve`` and one ``alknet connect`` to it, with an echo server as the tunnel target."""

    server: Proc
    client: Proc
    state: Path
    server_port: int
    socks: int
    echo_port: int
    key: KeyPair


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    key = new_keypair()
    state = tmp_path / "server"
    state.mkdir(mode=0o700)
    (state / "authorized_keys").write_text(key.line + "\n")
    (state / "authorized_keys").chmod(0o600)
    config = state / "alknet.toml"
    config.write_text("[rate_limits]\nmax_auth_attempts = 5\n")
    home = tmp_path / "client"
    home.mkdir(mode=0o700)
    write_keypair(home / "id_ed25519", key.key, "client")
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    server = alknet(
        [
            "serve",
            "--log-time",
            "never",
            "--config",
            str(config),
            "--listen",
            "tcp://127.0.0.1:0",
            "--login-timeout",
            "2",
        ],
        _env(state),
    )
    client: Proc | None = None
    try:
        await server.start()
        await server.wait_line('msg="server ready"')
        banner = "\n".join(server.out)
        port = re.search(r"listening   tcp 127\.0\.0\.1:(\d+)", banner)
        fp = re.search(r"host key    (SHA256:\S+)", banner)
        assert port and fp, banner
        client = alknet(
            [
                "connect",
                "--log-time",
                "never",
                "--server",
                f"127.0.0.1:{port.group(1)}",
                "--host-key",
                fp.group(1),
                "-D",
                "127.0.0.1:0",
            ],
            _env(home),
        )
        await client.start()
        await client.wait_line('msg="connected"')
        socks = int(client.matching('msg="socks5 listening"')[0].rpartition(":")[2])
        yield Pair(
            server, client, state, int(port.group(1)), socks, int(echo.sockets[0].getsockname()[1]), key
        )
    finally:
        for proc in (client, server):
            if proc is not None and proc.running:
                assert proc.proc is not None
                proc.proc.kill()
            if proc is not None:
                with contextlib.suppress(Exception):
                    await proc.wait(10)
        echo.close()


async def _socks_stream(socks: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT to 127.0.0.1:``port`` through the client; the open stream."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", socks), 5)
    writer.write(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"))
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x05\x00"
    assert await asyncio.wait_for(reader.readexactly(10), 10) == b"\x05\x00\x00\x01" + bytes(6)
    return reader, writer


async def _still_echoes(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], word: bytes) -> None:
    reader, writer = stream
    writer.write(word + b"\n")
    assert await asyncio.wait_for(reader.readline(), 5) == word + b"\n"


async def _exchange(port: int, data: bytes, *, eof: bool = True, timeout: float = 8.0) -> tuple[bytes, float]:
    """Send ``data`` (then EOF), read until the peer closes; (bytes received, seconds until closed)."""
    start = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    received = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            if eof:
                writer.write_eof()
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    received += chunk
    finally:
        writer.close()
    return received, time.monotonic() - start


def _no_crash(proc: Proc) -> None:
    assert proc.running, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert "level=ERROR" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------ tests


async def test_garbage_instead_of_ssh_banner_drops_only_that_connection(pair: Pair) -> None:
    stream = await _socks_stream(pair.socks, pair.echo_port)
    await _still_echoes(stream, b"before")
    rnd = random.Random(1928)
    garbage = [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"SSH-1.5-ancient\r\n",
        b"SSH-2.0-" + b"A" * 300,  # an endless version line: dropped by the 2 s login timeout at the latest
        bytes(rnd.randrange(256) for _ in range(4096)),
        b"\x00" * 1024,
        b"\r\n" * 100,
        b"",
    ]
    for data in garbage:
        received, elapsed = await _exchange(pair.server_port, data, eof=False)
        assert received.startswith(b"SSH-2.0-") or received == b"", received[:80]
        assert elapsed < 8.0
        await _still_echoes(stream, b"still here")
    # and with half-close right after the garbage
    for data in garbage[:3]:
        await _exchange(pair.server_port, data, eof=True)
    await _still_echoes(stream, b"after")
    _no_crash(pair.server)
    _no_crash(pair.client)
    assert len(pair.client.matching('msg="connected"')) == 1  # the client's session never dropped
    stream[1].close()


# (bytes sent, bytes expected back before the SOCKS5 port closes the connection)
SOCKS_GARBAGE = [
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00", b""),  # SOCKS4: closed without a reply
    (b"\x05\x01\x02", b"\x05\xff"),  # username/password only
    (b"\x05\x00", b"\x05\xff"),  # no methods at all
    (b"\x05\x03\x01\x02\x03", b"\x05\xff"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"\xff" * 1000, b""),
    (b"\x05", b""),  # truncated greeting, then EOF
    (b"\x05\x02\x00", b""),  # greeting shorter than its method count
    (b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00", b"\x05\x00"),  # truncated IPv4 request
    (b"\x05\x01\x00\x05\x01\x00\x03\x20abc", b"\x05\x00"),  # truncated domain
    (b"\x05\x01\x00\x05\x01\x00\x04" + bytes(8), b"\x05\x00"),  # truncated IPv6 request
    (b"\x05\x01\x00\x05\x01", b"\x05\x00"),  # request cut after CMD
    (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07\x00\x01" + bytes(6)),  # BIND
    (b"\x05\x01\x00\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07\x00\x01" + bytes(6)),  # UDP
    (
        b"\x05\x01\x00\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50",
        b"\x05\x00\x05\x08\x00\x01" + bytes(6),
    ),  # ATYP 9
]


async def test_garbage_and_truncated_socks5_input_keep_the_client_serving(pair: Pair) -> None:
    stream = await _socks_stream(pair.socks, pair.echo_port)
    await _still_echoes(stream, b"before")
    for sent, expected in SOCKS_GARBAGE:
        received, elapsed = await _exchange(pair.socks, sent)
        assert received == expected, (sent, received)
        assert elapsed < 5.0, sent
    rnd = random.Random(1080)
    for _ in range(30):
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
        received, _ = await _exchange(pair.socks, blob)
        assert len(received) <= 12, (blob, received)  # at most a method answer and one reply
    await _still_echoes(stream, b"after")
    # a new stream works as before
    fresh = await _socks_stream(pair.socks, pair.echo_port)
    await _still_echoes(fresh, b"fresh")
    fresh[1].close()
    stream[1].close()
    _no_crash(pair.client)
    _no_crash(pair.server)
    assert len(pair.client.matching('msg="connected"')) == 1


async def test_bad_toml_on_sighup_keeps_the_running_configuration(pair: Pair, tmp_path: Path) -> None:
    stream = await _socks_stream(pair.socks, pair.echo_port)
    config = pair.state / "alknet.toml"
    config.write_text("[rate_limits]\nmax_auth_attempts = 5\nmax_connections_per_ip = 1\nbogus_limit = 3\n")
    assert pair.server.proc is not None
    pair.server.proc.send_signal(signal.SIGHUP)
    line = await pair.server.wait_line('msg="config reload" result=error')
    assert "bogus_limit" in line
    # still the old limits (no per-IP limit): the session, a new stream and a second client all work
    await _still_echoes(stream, b"after a failed reload")
    home = tmp_path / "client2"
    home.mkdir(mode=0o700)
    write_keypair(home / "id_ed25519", pair.key.key, "client")
    other = alknet(
        [
            "connect",
            "--log-time",
            "never",
            "--server",
            f"127.0.0.1:{pair.server_port}",
            "--insecure-host-key",
            "--no-socks5",
            "-L",
            f"0:127.0.0.1:{pair.echo_port}",
        ],
        _env(home),
    )
    await other.start()
    try:
        await other.wait_line('msg="connected"')
        local = int(other.matching('msg="forward listening"')[0].rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        await _still_echoes((reader, writer), b"second client")
        writer.close()
    finally:
        assert await other.stop() == 0

    config.write_text("[rate_limits]\nmax_auth_attempts = 5\n")
    pair.server.proc.send_signal(signal.SIGHUP)
    await pair.server.wait_line('msg="config reload" result=ok')
    await _still_echoes(stream, b"after a good reload")
    stream[1].close()
    assert pair.server.running


async def _run_cli(argv: Sequence[str], home: Path, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *ALKNET,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(home),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:  # it started serving: the input was not refused
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


BAD_SPECS = [
    ("-L", "a:1:b:2:3"),
    ("-L", "[::1:80:x:1"),
    ("-L", "8080:host"),
    ("-L", "1:2"),
    ("-L", "65536:x:1"),
    ("-L", "0:unix:"),
    ("-R", "x:1:2"),
    ("-R", "0.0.0.0:8080:x"),
    ("-R", "70000:x:1"),
    ("-D", "127.0.0.1:99999"),
    ("-D", "nonsense"),
]


@pytest.fixture
def client_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("ALKNET_"):
            monkeypatch.delenv(var)
    home = tmp_path / "client"
    home.mkdir(mode=0o700)
    write_keypair(home / "id_ed25519", new_keypair().key, "client")
    monkeypatch.setenv("ALKNET_HOME", str(home))
    return home


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("alknet: error: "), err
    return lines[0]


@pytest.mark.parametrize(("flag", "spec"), BAD_SPECS)
def test_bad_forward_spec_exits_2_naming_it(
    client_home: Path, capsys: pytest.CaptureFixture[str], flag: str, spec: str
) -> None:
    line = _one_line_error(capsys, ["connect", "--server", "127.0.0.1:1", flag, spec])
    assert f"'{spec}'" in line and line.endswith("(see 'alknet connect --help')")


async def test_bad_forward_spec_as_a_real_process(client_home: Path) -> None:
    """The same through ``python -m alknet.cli``: nothing but the one line, nothing bound."""
    code, out, err = await _run_cli(["connect", "--server", "127.0.0.1:1", "-L", "a:1:b:2:3"], client_home)
    assert (code, out) == (2, "")
    assert err == (
        "alknet: error: invalid forward spec 'a:1:b:2:3': expected [LADDR:]LPORT:RHOST:RPORT or "
        "[LADDR:]LPORT:unix:/path (IPv6 in brackets) (see 'alknet connect --help')\n"
    )


BAD_TOML = [
    ("[server]\nbogus_key = 1\n", "server.bogus_key"),
    ('[rate_limits]\nmax_auth_attempts = "ten"\n', "rate_limits.max_auth_attempts"),
    ('[forwarding]\ndefault = "maybe"\n', "forwarding.default"),
    ('[[forwarding.rules]]\ntarget = "x:1"\naction = "allow"\nfoo = 1\n', "forwarding.rules[1].foo"),
    ('[[forwarding.rules]]\ntarget = "127.1:80"\naction = "allow"\n', "forwarding.rules[1].target"),
    ('[[listeners]]\ntransport = "tls"\nlisten = "127.0.0.1:0"\nstealth = "yes"\n', "listeners[1].stealth"),
    ('[[listeners]]\ntransport = "tls"\nlisten = "127.0.0.1:0"\nbogus = 1\n', "listeners[1].bogus"),
    ("[server\nkey = 1\n", "line 1"),
    ("nonsense = 1\n", "nonsense"),
]


@pytest.mark.parametrize(("text", "key"), BAD_TOML)
def test_bad_toml_exits_2_naming_the_key(
    tmp_path: Path, client_home: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    # the file's own listener when it has one (port 0), else a --listen on port 0
    listen = [] if "[[listeners]]" in text else ["--listen", "tcp://127.0.0.1:0"]
    line = _one_line_error(capsys, ["serve", "--config", str(cfg), *listen])
    assert line.startswith(f"alknet: error: {cfg}: ") and key in line


def test_bad_client_table_exits_2_naming_the_key(
    tmp_path: Path, client_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "client.toml"
    cfg.write_text("[client]\nsocks5 = 5\n")
    line = _one_line_error(capsys, ["connect", "--config", str(cfg), "--server", "127.0.0.1:1"])
    assert line == f"alknet: error: {cfg}: client.socks5: must be a string"


async def test_bad_toml_as_a_real_process(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[rate_limits]\nmax_auth_attempts = "ten"\n')
    code, out, err = await _run_cli(
        ["serve", "--config", str(cfg), "--listen", "tcp://127.0.0.1:0"], tmp_path / "state"
    )
    assert (code, out) == (2, "")
    assert err == f"alknet: error: {cfg}: rate_limits.max_auth_attempts: must be an integer\n"


async def test_bad_listener_table_is_reported_even_when_listen_replaces_it(tmp_path: Path) -> None:
    """configuration.md: the schema is strict and a misspelt key is reported, not ignored; --listen replaces
    the [[listeners]] list, but the file must still be valid."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[listeners]]\ntransport = "tls"\nlisten = "127.0.0.1:0"\nbogus = 1\n')
    try:
        code, _, err = await _run_cli(
            ["serve", "--quiet", "--config", str(cfg), "--listen", "tcp://127.0.0.1:0"],
            tmp_path / "state",
            8.0,
        )
    except TimeoutError:
        raise AssertionError("the server started despite the unknown key") from None
    assert code == 2 and "listeners[1].bogus" in err, err
