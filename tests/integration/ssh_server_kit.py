"""Shared kit of the SSH server integration tests: keys, certificates (``ssh-keygen -s``), a real
``SshServer`` on loopback, asyncssh clients, echo and recording TCP servers, log capture.

Test modules import it after putting this directory on ``sys.path`` (the suite runs with
``--import-mode=importlib``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core import logfmt
from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of
from alknet.core.config.dynamic import RateLimits
from alknet.core.config.reloader import ConfigReloader, build_dynamic
from alknet.core.config.static import ListenerSpec
from alknet.core.ssh.channels import ControlRegistry
from alknet.core.ssh.client import ClientOptions, SshClient
from alknet.core.ssh.outbound import Dialer, Resolver, direct_dial
from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions
from alknet.core.tls.context import ServerContexts, TlsVerify
from alknet.core.transport.tls import TlsTransport

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
T = 10.0  # bound for every single await in these tests


# ----------------------------------------------------------------------------------------------- keys


@dataclass
class KeyPair:
    """An Ed25519 user (or CA) key: the cryptography key, the asyncssh key, its line and fingerprint."""

    key: Ed25519PrivateKey
    comment: str = "test"
    path: Path | None = None

    @property
    def ssh_key(self) -> asyncssh.SSHKey:
        return asyncssh.import_private_key(private_key_to_openssh(self.key, self.comment))

    @property
    def line(self) -> str:
        return public_key_of(self.key, self.comment).line

    @property
    def fingerprint(self) -> str:
        return public_key_of(self.key).fingerprint

    def write(self, directory: Path, name: str) -> Path:
        """Write the private key (0600) and ``.pub`` so ``ssh`` / ``ssh-keygen`` can use them."""
        path = directory / name
        path.write_bytes(private_key_to_openssh(self.key, self.comment))
        path.chmod(0o600)
        path.with_suffix(".pub").write_text(self.line + "\n")
        self.path = path
        return path


def new_keypair(comment: str = "test") -> KeyPair:
    return KeyPair(generate_private_key(), comment)


def sign_certificate(
    ca: KeyPair,
    user: KeyPair,
    directory: Path,
    *,
    principals: Sequence[str] | None = ("alknet",),
    validity: str | None = None,
    options: Sequence[str] = ("permit-port-forwarding",),
    clear: bool = True,
    name: str = "user",
) -> asyncssh.SSHCertificate:
    """Sign ``user`` with ``ca`` using ``ssh-keygen -s``; returns the certificate for asyncssh.

    ``principals=None`` or ``()`` leaves ``-n`` out (an empty principal list). ``clear`` starts from ``-O
    clear`` (no extensions), then adds ``options`` (``permit-port-forwarding``, ``source-address=...``,
    ``verify-required`` ...).
    """
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    ca_path = ca.path or ca.write(directory, f"{name}-ca")
    user_path = user.path or user.write(directory, name)
    args = [SSH_KEYGEN, "-q", "-s", str(ca_path), "-I", f"{name}-id"]
    if principals:
        args += ["-n", ",".join(principals)]
    if validity is not None:
        args += ["-V", validity]
    if clear:
        args += ["-O", "clear"]
    for opt in options:
        args += ["-O", opt]
    args.append(str(user_path.with_suffix(".pub")))
    subprocess.run(args, check=True, capture_output=True, timeout=30)
    cert_path = user_path.parent / (user_path.name + "-cert.pub")
    return asyncssh.read_certificate(str(cert_path))


# ------------------------------------------------------------------------------------------------ logs


class LogCapture:
    """The real logfmt handler (``setup_logging``, no ``time=``) on a buffer; restores the root logger."""

    def __init__(self, level: str = "info") -> None:
        self.level = level
        self.buffer = io.StringIO()
        self._handler: logging.Handler | None = None
        self._root_level = logging.getLogger().level

    def __enter__(self) -> LogCapture:
        self._handler = logfmt.setup_logging(self.level, "never", stream=self.buffer)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        logging.getLogger().setLevel(self._root_level)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def matching(self, fragment: str) -> list[str]:
        return [line for line in self.lines if fragment in line]

    async def wait_for(self, fragment: str, count: int = 1, timeout: float = T) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.matching(fragment)) < count:
            if loop.time() > deadline:
                raise AssertionError(f"log line {fragment!r} x{count} not seen; log:\n{self.text}")
            await asyncio.sleep(0.01)
        return self.matching(fragment)


# ------------------------------------------------------------------------------------------- targets


class EchoServer:
    """A loopback TCP echo server that counts accepted connections (the "recording listener")."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.accepted = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> EchoServer:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeResolver:
    """Answers from a table and records every name asked."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {k: [ip_address(a) for a in v] for k, v in table.items()}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> list[IPv4Address | IPv6Address]:
        self.calls.append(name)
        if name not in self.table:
            raise OSError("no such name")
        return list(self.table[name])


class MappingDialer:
    """A dialer that connects unroutable test addresses (``10.9.9.9:22``) to loopback ports and records
    every address it was asked for."""

    def __init__(self, mapping: Mapping[tuple[str, int], int] | None = None) -> None:
        self.mapping = dict(mapping or {})
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, address: IPv4Address | IPv6Address, port: int, timeout: float) -> socket.socket:
        self.calls.append((str(address), port))
        target = self.mapping.get((str(address), port))
        if target is not None:
            return await direct_dial(ip_address("127.0.0.1"), target, timeout)
        return await direct_dial(address, port, timeout)


# ------------------------------------------------------------------------------------------- harness


def client_options(**overrides: Any) -> dict[str, Any]:
    """asyncssh client options that read nothing from ``~/.ssh`` and use no agent."""
    opts: dict[str, Any] = {
        "username": "alknet",
        "known_hosts": None,
        "agent_path": None,
        "config": None,
        "password": None,
        "x509_trusted_certs": None,
        "preferred_auth": "publickey",
        "connect_timeout": T,
    }
    opts.update(overrides)
    return opts


@dataclass
class Harness:
    """A real ``SshServer`` with the given dynamic config on 127.0.0.1 (one listener per kind)."""

    tmp: Path
    authorized_keys: str = ""
    cert_authority: str | None = None
    forwarding: Mapping[str, Any] | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    evict_revoked: bool = False
    kinds: Sequence[str] = ("tcp",)
    resolver: Resolver | None = None
    dialer: Dialer | None = None
    proxy: str | None = None
    login_timeout: float = 30.0
    keepalive_interval: float = 15.0
    keepalive_count: int = 3
    control: ControlRegistry | None = None
    stealth: bool = False
    extra_specs: Sequence[ListenerSpec] = ()
    server: SshServer | None = None
    reloader: ConfigReloader | None = None
    tls: ServerContexts | None = None

    async def __aenter__(self) -> Harness:
        loaded = build_dynamic(
            self.authorized_keys.encode(),
            self.cert_authority.encode() if self.cert_authority is not None else None,
            forwarding=self.forwarding,
            rate_limits=self.rate_limits,
            evict_revoked=self.evict_revoked,
            proxy=self.proxy,
        )
        self.reloader = ConfigReloader.from_loaded(loaded)
        listeners = []
        for kind in self.kinds:
            spec = ListenerSpec(kind=kind, host="127.0.0.1", port=0, stealth=self.stealth and kind == "tls")
            tls = None
            if kind == "tls":
                self.tls = self.tls or ServerContexts.self_signed(self.tmp / "state")
                tls = self.tls
            listeners.append(ServerListener(spec, tls))
        listeners += [ServerListener(spec) for spec in self.extra_specs]
        options = SshServerOptions(
            host_key=generate_private_key(),
            listeners=tuple(listeners),
            proxy=self.proxy,
            login_timeout=self.login_timeout,
            keepalive_interval=self.keepalive_interval,
            keepalive_count=self.keepalive_count,
            connect_timeout=3.0,
        )
        self.server = SshServer(
            options, self.reloader, resolver=self.resolver, dialer=self.dialer, control=self.control
        )
        await asyncio.wait_for(self.server.start(), T)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await asyncio.wait_for(self.server.close(drain=0.2), T)

    def port(self, kind: str = "tcp", host: str = "127.0.0.1") -> int:
        assert self.server is not None
        for listener, addrs in self.server.listeners:
            if listener.spec.kind == kind and listener.spec.host == host:
                return int(addrs[0].rpartition(":")[2])
        raise KeyError(kind)

    async def connect(
        self, key: KeyPair | Sequence[Any] | None, *, kind: str = "tcp", **overrides: Any
    ) -> asyncssh.SSHClientConnection:
        """An authenticated asyncssh client (``key``: a KeyPair, or a list for ``client_keys``)."""
        if isinstance(key, KeyPair):
            keys: Any = [key.ssh_key]
        else:
            keys = key
        opts = client_options(client_keys=keys, **overrides)
        if kind == "tls":
            assert self.tls is not None
            transport = TlsTransport(
                "127.0.0.1", self.port("tls"), verify=TlsVerify(pin=self.tls.fingerprint)
            )
            return await asyncio.wait_for(
                asyncssh.connect("127.0.0.1", self.port("tls"), tunnel=transport, **opts), T
            )
        return await asyncio.wait_for(asyncssh.connect("127.0.0.1", self.port(kind), **opts), T)

    @property
    def srv(self) -> SshServer:
        assert self.server is not None
        return self.server

    def alknet_client(self, key: KeyPair, kind: str = "tcp") -> SshClient:
        """alknet's own ``SshClient`` for ``key``, pinned to this server's host key (not connected yet)."""
        return SshClient(
            ClientOptions(
                server=f"127.0.0.1:{self.port(kind)}",
                identity=private_key_to_openssh(key.key),
                host_key=self.srv.host_key_fingerprint,
                connect_timeout=T,
            )
        )


async def echo_through(
    conn: asyncssh.SSHClientConnection, host: str, port: int, payload: bytes = b"ping"
) -> bytes:
    """Open ``direct-tcpip`` to ``host:port``, send ``payload``, EOF, and read everything back."""
    reader, writer = await asyncio.wait_for(conn.open_connection(host, port), T)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    return data


async def open_failure(conn: asyncssh.SSHClientConnection, host: str, port: int) -> asyncssh.ChannelOpenError:
    """The channel-open failure of ``direct-tcpip`` to ``host:port`` (fails the test if it opens)."""
    try:
        _, writer = await asyncio.wait_for(conn.open_connection(host, port), T)
    except asyncssh.ChannelOpenError as exc:
        return exc
    writer.close()
    raise AssertionError("channel opened but a failure was expected")


@contextlib.asynccontextmanager
async def connected(harness: Harness, key: KeyPair, **kw: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await harness.connect(key, **kw)
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), T)


# ------------------------------------------------------------------------------------------ stock ssh


def ssh_command(port: int, *identities: Path, user: str = "alknet") -> list[str]:
    """A stock OpenSSH client isolated from ``~/.ssh`` (no config, no known_hosts, no agent)."""
    if shutil.which("ssh") is None:
        pytest.skip("openssh-client is not installed")
    args = [
        SSH,
        "-F",
        "/dev/null",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
    ]
    for identity in identities:
        args += ["-i", str(identity)]
    return [*args, "-l", user]


async def run_process(args: Sequence[str], timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a command without blocking the event loop (the server under test runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --------------------------------------------------------------------------------------------- proxies


class Socks5Proxy:
    """A minimal SOCKS5 proxy (no auth, CONNECT only) that records each request's ATYP and host and connects
    every request to ``target_port`` on 127.0.0.1."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: list[tuple[int, str, int]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"socks5://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Socks5Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _ver, n = await reader.readexactly(2)
            await reader.readexactly(n)
            writer.write(b"\x05\x00")
            _ver, _cmd, _rsv, atyp = await reader.readexactly(4)
            if atyp == 3:
                (length,) = await reader.readexactly(1)
                host = (await reader.readexactly(length)).decode()
            elif atyp == 1:
                host = str(ip_address(await reader.readexactly(4)))
            else:
                host = str(ip_address(await reader.readexactly(16)))
            port = int.from_bytes(await reader.readexactly(2), "big")
            self.requests.append((atyp, host, port))
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


class HttpProxy:
    """An HTTP proxy that answers every CONNECT with ``status`` and closes; records the request lines."""

    def __init__(self, status: bytes = b"403 Forbidden") -> None:
        self.status = status
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> HttpProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            writer.write(b"HTTP/1.1 " + self.status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
