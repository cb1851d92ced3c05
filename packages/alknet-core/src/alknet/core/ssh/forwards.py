"""Client forwards: ``-L``/``-R`` spec parsing (transport-and-ssh.md §14) and the local listener plumbing.

No SSH here: the SSH client injects ``open_channel(host, port)`` (and ``open_unix_channel(path)`` for
``LPORT:unix:/path``) returning a ``(reader, writer)`` pair -- asyncssh's ``SSHReader``/``SSHWriter`` or
asyncio streams -- or raising ``ChannelOpenFailure`` (asyncssh's ``ChannelOpenError`` has the same
``code``/``reason`` attributes and is accepted wherever a failure is mapped). ``NotConnected`` means no SSH
session right now.

Forward targets are never logged: there is no per-connection log line at all, and the dataclasses hide targets
in their ``repr``. Listener lines: ``msg="forward listening" addr=<local addr>`` (plus a WARNING for a
listener reachable from the network). A bind failure raises ``ListenError``: ``cannot listen on
127.0.0.1:5432: address already in use``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from alknet.core import logfmt
from alknet.core.errors import ConfigError

__all__ = [
    "DEFAULT_BIND_HOST",
    "ChannelOpenFailure",
    "ChannelReader",
    "ChannelStreams",
    "ChannelWriter",
    "ForwardSpecError",
    "ListenError",
    "LocalForward",
    "LocalForwardListener",
    "NotConnected",
    "OpenChannel",
    "OpenUnixChannel",
    "RemoteForward",
    "StreamListener",
    "format_listen_addr",
    "parse_local_forward",
    "parse_remote_forward",
    "pipe",
]

log = logging.getLogger("alknet.client")

DEFAULT_BIND_HOST = "127.0.0.1"
PIPE_CHUNK = 256 * 1024  # read size of the -L/SOCKS5 pipe: whole 128 KiB SSH packets and more

# --------------------------------------------------------------------------------------------- channels


class ChannelOpenFailure(Exception):
    """An SSH channel open refused by the server.

    ``code``: 1 prohibited, 2 connect failed, 4 resource shortage; ``reason``: the fixed description of
    transport-and-ssh.md §8.
    """

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2
    UNKNOWN_CHANNEL_TYPE = 3
    RESOURCE_SHORTAGE = 4

    code: int
    reason: str

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"channel open failed: {self.reason} (code {self.code})"


class NotConnected(Exception):
    """No SSH session is up (the reconnect supervisor is between attempts): opens fail at once."""


class ChannelReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ChannelWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


ChannelStreams = tuple[ChannelReader, ChannelWriter]
OpenChannel = Callable[[str, int], Awaitable[ChannelStreams]]
OpenUnixChannel = Callable[[str], Awaitable[ChannelStreams]]


async def _copy(reader: ChannelReader, writer: ChannelWriter, chunk: int) -> bool:
    """Copy until EOF with backpressure; True if the EOF could be passed on (half-close)."""
    while True:
        data = await reader.read(chunk)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
        return True
    return False


async def pipe(
    a_reader: ChannelReader,
    a_writer: ChannelWriter,
    b_reader: ChannelReader,
    b_writer: ChannelWriter,
    *,
    chunk: int = PIPE_CHUNK,
) -> None:
    """Pump ``a -> b`` and ``b -> a`` with backpressure until both directions reach EOF.

    EOF is passed on per direction (half-close). An error in either direction, or an EOF that cannot be passed
    on, ends both. Both writers are closed on return; errors are swallowed (the caller has nothing left to
    do).
    """
    tasks = {
        asyncio.ensure_future(_copy(a_reader, b_writer, chunk)),
        asyncio.ensure_future(_copy(b_reader, a_writer, chunk)),
    }
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.cancelled() or t.exception() is not None or not t.result() for t in done):
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a_writer, b_writer):
            with contextlib.suppress(Exception):
                writer.close()


# --------------------------------------------------------------------------------------------- specs


class ForwardSpecError(ConfigError):
    """A malformed ``-L``/``-R`` spec (a usage error: exit 2). The message quotes the spec."""


@dataclass(frozen=True, slots=True)
class LocalForward:
    """``-L``: listen on ``listen_host:listen_port`` and forward each connection.

    ``listen_host`` ``*`` = all interfaces, ``listen_port`` 0 = ephemeral. The target is
    ``target_host:target_port``, or the server-side unix socket ``target_path`` (then host ``""``, port 0).
    """

    listen_host: str
    listen_port: int
    target_host: str = field(repr=False)
    target_port: int = field(repr=False)
    target_path: str | None = field(default=None, repr=False)

    @property
    def is_unix(self) -> bool:
        return self.target_path is not None


@dataclass(frozen=True, slots=True)
class RemoteForward:
    """``-R``: the server listens on ``bind_host:bind_port`` (port 0 = server-chosen).

    Each connection is forwarded to ``target_host:target_port`` on the client side.
    """

    bind_host: str
    bind_port: int
    target_host: str = field(repr=False)
    target_port: int = field(repr=False)


def _shown(spec: str) -> str:
    text = spec if len(spec) <= 200 else spec[:200] + "..."
    return "'" + logfmt.escape(text).replace("'", "\\'") + "'"


def _split(spec: str, fail: Callable[[str], ForwardSpecError]) -> list[str]:
    """Split on ``:`` outside ``[...]``; a bracketed part must be a whole field."""
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "[":
            end = spec.find("]", i)
            if end < 0:
                raise fail("unbalanced '['")
            if cur:
                raise fail("'[' must start a field")
            cur = spec[i : end + 1]
            i = end + 1
            if i < len(spec) and spec[i] != ":":
                raise fail("expected ':' after ']'")
            continue
        if c == "]":
            raise fail("unbalanced ']'")
        if c == ":":
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def _port(text: str, what: str, fail: Callable[[str], ForwardSpecError], *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise fail(f"{what} '{text[:16]}' is not a port number")
    value = int(text)
    if not low <= value <= 65535:
        raise fail(f"{what} {value} is out of range ({low}-65535)")
    return value


def _host(text: str, what: str, fail: Callable[[str], ForwardSpecError], *, wildcard: bool = False) -> str:
    if text.startswith("["):
        inner = text[1:-1]
        try:
            addr = ipaddress.IPv6Address(inner)
        except ValueError:
            raise fail(f"{what} in brackets is not an IPv6 address") from None
        if addr.scope_id:
            raise fail(f"{what} must not carry an IPv6 zone id")
        return addr.compressed
    if not text:
        raise fail(f"{what} is empty")
    if text == "*":
        if wildcard:
            return "*"
        raise fail(f"{what} cannot be '*'")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c in "/\\@%" for c in text):
        raise fail(f"{what} contains characters not allowed in a host")
    return text


def parse_local_forward(spec: str) -> LocalForward:
    """Parse ``-L``: ``[LADDR:]LPORT:RHOST:RPORT`` or ``[LADDR:]LPORT:unix:/path``. Raises
    ``ForwardSpecError``."""
    usage = "expected [LADDR:]LPORT:RHOST:RPORT or [LADDR:]LPORT:unix:/path (IPv6 in brackets)"

    def fail(why: str) -> ForwardSpecError:
        return ForwardSpecError(f"invalid forward spec {_shown(spec)}: {why}")

    unix_at = spec.find(":unix:/")
    if unix_at >= 0:
        path = spec[unix_at + len(":unix:") :]
        head = _split(spec[:unix_at], fail)
        if len(head) not in (1, 2):
            raise fail(usage)
        if "\0" in path or len(path.encode("utf-8", "surrogatepass")) > 107:
            raise fail("the unix socket path must be at most 107 bytes without NUL")
        laddr = _host(head[0], "LADDR", fail, wildcard=True) if len(head) == 2 else DEFAULT_BIND_HOST
        lport = _port(head[-1], "LPORT", fail, allow_zero=True)
        return LocalForward(laddr, lport, "", 0, path)
    parts = _split(spec, fail)
    if len(parts) == 3:
        parts.insert(0, DEFAULT_BIND_HOST)
    elif len(parts) != 4:
        raise fail(usage)
    laddr = _host(parts[0], "LADDR", fail, wildcard=True)
    lport = _port(parts[1], "LPORT", fail, allow_zero=True)
    rhost = _host(parts[2], "RHOST", fail)
    rport = _port(parts[3], "RPORT", fail, allow_zero=False)
    return LocalForward(laddr, lport, rhost, rport)


def parse_remote_forward(spec: str) -> RemoteForward:
    """Parse ``-R``: ``[RADDR:]RPORT:LHOST:LPORT`` (RPORT 0 = server-chosen). Raises ``ForwardSpecError``."""

    def fail(why: str) -> ForwardSpecError:
        return ForwardSpecError(f"invalid remote forward spec {_shown(spec)}: {why}")

    parts = _split(spec, fail)
    if len(parts) == 3:
        parts.insert(0, DEFAULT_BIND_HOST)
    elif len(parts) != 4:
        raise fail("expected [RADDR:]RPORT:LHOST:LPORT (IPv6 in brackets)")
    raddr = _host(parts[0], "RADDR", fail, wildcard=True)
    rport = _port(parts[1], "RPORT", fail, allow_zero=True)
    lhost = _host(parts[2], "LHOST", fail)
    lport = _port(parts[3], "LPORT", fail, allow_zero=False)
    return RemoteForward(raddr, rport, lhost, lport)


# --------------------------------------------------------------------------------------------- listening


class ListenError(OSError):
    """A local listener could not bind: ``cannot listen on <addr>: <reason>`` (exit 1 at start)."""

    def __init__(self, addr: str, cause: OSError) -> None:
        super().__init__(cause.errno, _bind_reason(cause))
        self.addr = addr
        self.message = f"cannot listen on {addr}: {_bind_reason(cause)}"

    def __str__(self) -> str:
        return self.message


_BIND_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EAFNOSUPPORT: "address family not supported",
}


def format_listen_addr(host: str, port: int) -> str:
    """``127.0.0.1:5432``, ``[::1]:8080``, ``*:8080``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_reason(exc: OSError) -> str:
    if exc.errno in _BIND_REASONS:
        return _BIND_REASONS[exc.errno]
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the address"
    return (exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__).lower()


def _listen_socket(family: int, addr: tuple[Any, ...], dual: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def bind_listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bind listening sockets for ``host`` (``*`` = all interfaces, one dual-stack socket when possible).

    A name such as ``localhost`` binds every address it resolves to, on one port even when ``port`` is 0; an
    address that is unavailable on this host is skipped if another one binds. Raises ``ListenError``.
    """
    shown = format_listen_addr(host, port)
    if host == "*":
        try:
            return [_listen_socket(socket.AF_INET6, ("::", port, 0, 0), True)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise ListenError(shown, exc) from None
        try:
            return [_listen_socket(socket.AF_INET, ("0.0.0.0", port), False)]
        except OSError as exc:
            raise ListenError(shown, exc) from None
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(shown, exc) from None
    socks: list[socket.socket] = []
    skipped: OSError | None = None
    seen: set[tuple[int, str]] = set()
    for family, _type, _proto, _canon, sockaddr in infos:
        key = (int(family), str(sockaddr[0]))
        if key in seen:
            continue
        seen.add(key)
        chosen = socks[0].getsockname()[1] if socks else port
        try:
            socks.append(_listen_socket(family, (sockaddr[0], chosen, *sockaddr[2:]), False))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                skipped = skipped or exc
                continue
            for sock in socks:
                sock.close()
            raise ListenError(shown, exc) from None
    if not socks:
        raise ListenError(shown, skipped or OSError(errno.EADDRNOTAVAIL, "address not available"))
    return socks


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamListener:
    """TCP listener(s) on one address whose per-connection handler tasks end with the listener.

    ``start()`` binds (``ListenError`` on failure) and logs ``msg="<label> listening" addr=<addr>`` per bound
    address, plus a WARNING when the address is reachable from the network. The handler must not raise;
    anything it does raise is dropped without logging (it could carry a destination).
    """

    def __init__(self, host: str, port: int, handler: ConnectionHandler, *, label: str) -> None:
        self.host = host
        self.requested_port = port
        self._handler = handler
        self._label = label
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bound: list[tuple[str, int]] = []
        self._closing = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound ``(host, port)`` pairs (kept after ``aclose()``)."""
        return list(self._bound)

    @property
    def port(self) -> int:
        """The bound port (the chosen one when 0 was requested)."""
        if not self._bound:
            raise RuntimeError("listener is not started")
        return self._bound[0][1]

    async def start(self) -> None:
        socks = await bind_listen_sockets(self.host, self.requested_port)
        try:
            for sock in socks:
                name = sock.getsockname()
                self._bound.append((str(name[0]), int(name[1])))
                self._servers.append(await asyncio.start_server(self._on_connection, sock=sock))
        except BaseException:
            for sock in socks:
                sock.close()
            await self.aclose()
            raise
        for host, port in self.addresses:
            shown = format_listen_addr("*" if self.host == "*" else host, port)
            logfmt.log_event(log, logging.INFO, f"{self._label} listening", addr=shown)
        if not _is_loopback(self.host):
            logfmt.log_event(
                log,
                logging.WARNING,
                f"{self._label} is reachable from the network",
                addr=format_listen_addr(self.host, self.port),
            )

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closing or task is None:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except asyncio.CancelledError:
            # aclose() cancels handlers; re-raising would only make asyncio's stream callback log the
            # cancellation.
            pass
        except Exception as exc:
            log.debug("%s connection error: %s", self._label, type(exc).__name__)
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def aclose(self) -> None:
        """Stop accepting, end every connection, release the port(s)."""
        self._closing = True
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> StreamListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class LocalForwardListener(StreamListener):
    """``-L``: each accepted connection opens one channel to the forward's target and pipes bytes both ways.

    A failed open (``ChannelOpenFailure``, ``NotConnected``, anything else) just closes the accepted
    connection.
    """

    def __init__(
        self,
        forward: LocalForward,
        open_channel: OpenChannel,
        open_unix_channel: OpenUnixChannel | None = None,
    ) -> None:
        if forward.is_unix and open_unix_channel is None:
            raise ValueError("a unix-socket forward needs open_unix_channel")
        super().__init__(forward.listen_host, forward.listen_port, self._serve, label="forward")
        self.forward = forward
        self._open_channel = open_channel
        self._open_unix_channel = open_unix_channel

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fwd = self.forward
        try:
            if fwd.target_path is not None and self._open_unix_channel is not None:
                chan_reader, chan_writer = await self._open_unix_channel(fwd.target_path)
            else:
                chan_reader, chan_writer = await self._open_channel(fwd.target_host, fwd.target_port)
        except Exception:
            writer.close()
            return
        await pipe(reader, writer, chan_reader, chan_writer)
