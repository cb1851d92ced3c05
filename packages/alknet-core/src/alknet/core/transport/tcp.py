"""The ``tcp`` transport (transport-and-ssh.md §2) and the socket accept machinery shared with ``tls``.

Client: ``loop.create_connection`` to ``host:port``, or an injected ``dial`` coroutine for the client
``--proxy`` (:func:`proxy_dial`; any ``dial(host, port, timeout)`` returning a connected socket or an asyncio
``(reader, writer)`` pair fits). Server: a raw accept loop per listening socket, ``TCP_NODELAY`` everywhere,
IPv4 and IPv6, :class:`~alknet.core.transport.base.BindError` with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from alknet.core.proxy import ProxyURL, open_socket_via, parse_proxy_url

from .base import (
    AcceptorClosed,
    Admit,
    BindError,
    HeldProtocol,
    Release,
    Transport,
    TransportAcceptor,
    TransportInfo,
    TransportKind,
    attach,
    format_hostport,
    held_protocol,
    normalise_addr,
    set_transport_info,
)
from .bridge import StreamReaderWriterStream, StreamTransport

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TCP_PORT",
    "Dial",
    "Dialled",
    "SocketAcceptor",
    "TcpAcceptor",
    "TcpTransport",
    "bind_listeners",
    "open_stream",
    "proxy_dial",
]

log = logging.getLogger("alknet.transport")

P = TypeVar("P", bound=asyncio.BaseProtocol)

DEFAULT_CONNECT_TIMEOUT = 10.0
#: Default tcp listen ``127.0.0.1:2222`` and client port.
DEFAULT_TCP_PORT = 2222
_LOCAL_ADDR_CACHE = 64  # local addresses remembered per acceptor (a wildcard listener sees one per interface)

Dialled = socket.socket | tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: ``dial(host, port, timeout)``: a connected TCP stream to ``host:port`` (e.g. through a proxy).
Dial = Callable[[str, int, float], Awaitable[Dialled]]

_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EAFNOSUPPORT: "address family not supported",
}


def _reason(exc: OSError) -> str:
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _set_nodelay(sock: socket.socket | None) -> None:
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def bind_listeners(
    kind: TransportKind, host: str, port: int, backlog: int = 128
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port`` (every address the host resolves to).

    Raises :class:`BindError` such as ``cannot listen on tcp 127.0.0.1:2222: address already in use``.
    """
    where = f"{kind} {format_hostport(host or '*', port)}"
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise BindError(f"cannot listen on {where}: cannot resolve host ({exc})") from None
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    bound_port = port
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            addr = (sockaddr[0], bound_port, *sockaddr[2:])
            sock.bind(addr)
            bound_port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise BindError(f"cannot listen on {where}: {_reason(exc)}") from None
    if not socks:
        raise BindError(f"cannot listen on {where}: no usable address")
    return socks


def proxy_dial(proxy: str | ProxyURL) -> Dial:
    """A :data:`Dial` through the client ``--proxy`` (names go to the proxy unresolved).

    A bad URL raises ``ProxyURLError`` (a ``ConfigError``).
    """
    parsed = parse_proxy_url(proxy) if isinstance(proxy, str) else proxy

    async def dial(host: str, port: int, timeout: float) -> Dialled:
        return await open_socket_via(parsed, host, port, timeout=timeout)

    return dial


async def open_stream(
    host: str, port: int, *, dial: Dial | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> asyncio.Transport:
    """A connected TCP stream to ``host:port`` in the held state (a :class:`HeldProtocol` buffers input)."""
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport
    async with asyncio.timeout(timeout):
        if dial is None:
            transport, _ = await loop.create_connection(HeldProtocol, host, port)
        else:
            dialled = await dial(host, port, timeout)
            if isinstance(dialled, socket.socket):
                dialled.setblocking(False)
                transport, _ = await loop.create_connection(HeldProtocol, sock=dialled)
            else:
                reader, writer = dialled
                extra = {
                    "peername": writer.get_extra_info("peername"),
                    "sockname": writer.get_extra_info("sockname"),
                }
                _set_nodelay(writer.get_extra_info("socket"))
                bridged = StreamTransport(StreamReaderWriterStream(reader, writer), extra)
                bridged.start(HeldProtocol())
                return bridged
    _set_nodelay(transport.get_extra_info("socket"))
    return transport


class TcpTransport(Transport):
    """Client side of ``tcp``: ``asyncssh.connect(host, port, tunnel=TcpTransport(host, port))``."""

    kind = TransportKind.TCP

    def __init__(
        self,
        host: str,
        port: int,
        *,
        dial: Dial | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.dial = dial
        self.connect_timeout = connect_timeout

    def describe(self) -> str:
        via = " via proxy" if self.dial is not None else ""
        return f"tcp://{format_hostport(self.host, self.port)}{via}"

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str | None = None, port: int | None = None
    ) -> tuple[asyncio.Transport, P]:
        transport = await open_stream(self.host, self.port, dial=self.dial, timeout=self.connect_timeout)
        info = TransportInfo(
            kind=self.kind,
            remote_addr=normalise_addr(transport.get_extra_info("peername")),
            local_addr=normalise_addr(transport.get_extra_info("sockname")),
        )
        set_transport_info(transport, info)
        protocol = protocol_factory()
        try:
            attach(transport, protocol)
        except BaseException:
            transport.abort()
            raise
        return transport, protocol

    async def aclose(self) -> None:
        return None


class SocketAcceptor(TransportAcceptor):
    """Raw accept loop per listening socket; subclasses turn an accepted socket into a held transport."""

    kind = TransportKind.TCP

    def __init__(
        self, host: str, port: int, *, admit: Admit | None = None, backlog: int = 128, queue_size: int = 64
    ) -> None:
        self.host = host
        self.port = port
        self.admit = admit
        self.backlog = backlog
        self.listen_addrs = []
        self.endpoint_id = None
        self._socks: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[tuple[asyncio.Transport, TransportInfo] | None] = asyncio.Queue(queue_size)
        self._closed = False
        # one string / tuple shared by the TransportInfo of every connection rather than a copy each
        self._label: tuple[tuple[str, int], str] | None = None
        self._local_addrs: dict[Any, tuple[str, int] | None] = {}

    @property
    def label(self) -> str:
        """The configured listener, e.g. ``tls://0.0.0.0:443``."""
        key = (self.host, self.port)
        cached = self._label
        if cached is None or cached[0] != key:
            cached = self._label = (key, f"{self.kind}://{format_hostport(self.host or '*', self.port)}")
        return cached[1]

    def _local_addr(self, sockname: Any) -> tuple[str, int] | None:
        """``normalise_addr(sockname)``, the same tuple for every connection to one local address."""
        try:
            return self._local_addrs[sockname]
        except (KeyError, TypeError):
            pass
        addr = normalise_addr(sockname)
        if len(self._local_addrs) >= _LOCAL_ADDR_CACHE:
            self._local_addrs.clear()
        with contextlib.suppress(TypeError):
            self._local_addrs[sockname] = addr
        return addr

    async def start(self) -> None:
        if self._closed:
            raise AcceptorClosed("acceptor closed")
        if self._socks:
            return
        self._socks = await bind_listeners(self.kind, self.host, self.port, self.backlog)
        self.listen_addrs = []
        for sock in self._socks:
            host, port = sock.getsockname()[:2]
            self.listen_addrs.append(format_hostport(host, port))
        for sock in self._socks:
            self._spawn(self._accept_loop(sock))

    @property
    def ports(self) -> list[int]:
        return [sock.getsockname()[1] for sock in self._socks]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self._closed:
                    return
                log.debug("accept failed on %s: %s", self.label, _reason(exc))
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._handle(sock))

    async def _handle(self, sock: socket.socket) -> None:
        try:
            info = TransportInfo(
                kind=self.kind,
                remote_addr=normalise_addr(sock.getpeername()),
                local_addr=self._local_addr(sock.getsockname()),
                listener=self.label,
            )
        except OSError:
            sock.close()
            return
        release: Release | None = None
        if self.admit is not None:
            try:
                release = self.admit(info)
            except Exception:
                log.exception("admit hook failed")
                release = None
            if release is None:
                sock.close()
                return
        _set_nodelay(sock)
        result: tuple[asyncio.Transport, TransportInfo] | None = None
        try:
            result = await self._establish(sock, info)
        except asyncio.CancelledError:
            sock.close()
            if release is not None:
                release()
            raise
        except Exception as exc:
            log.debug("%s connection from %s dropped: %s", self.kind, info.rate_key(), exc)
            sock.close()
        if result is None:
            if release is not None:
                release()
            return
        transport = result[0]
        held = held_protocol(transport)
        if release is not None:
            if held is not None:
                held.add_release(release)
            else:
                release()
        try:
            await self._queue.put(result)
        except asyncio.CancelledError:
            transport.abort()
            raise
        if self._closed:
            transport.abort()

    async def _establish(
        self, sock: socket.socket, info: TransportInfo
    ) -> tuple[asyncio.Transport, TransportInfo] | None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(HeldProtocol, sock)
        set_transport_info(transport, info)
        return transport, info

    async def accept(self) -> tuple[asyncio.Transport, TransportInfo]:
        if self._closed:
            raise AcceptorClosed("acceptor closed")
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next waiter too
            raise AcceptorClosed("acceptor closed")
        return item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self._socks:
            sock.close()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[0].abort()
        self._queue.put_nowait(None)


class TcpAcceptor(SocketAcceptor):
    """Server side of ``tcp``; default listen ``127.0.0.1:2222``."""

    kind = TransportKind.TCP
