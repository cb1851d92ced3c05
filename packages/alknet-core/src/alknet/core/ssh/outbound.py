"""Outbound tunnel connections of the SSH server (transport-and-ssh.md §8 steps 5-6, §10).

- :class:`OutboundConnector` opens the target socket: directly to the policy-checked addresses in resolver
  order (``SO_KEEPALIVE``, ``TCP_NODELAY``, one connect timeout for the whole attempt), or through the
  server ``--proxy`` (SOCKS5 / HTTP CONNECT via :mod:`alknet.core.proxy`; names go to the proxy
  unresolved), or to a local unix socket (always local, never through the proxy). Failures raise
  :class:`OutboundError` whose ``reason`` is one of the fixed channel-open failure texts.
- :func:`system_resolver` is the default DNS resolver (``getaddrinfo``); any ``Resolver`` (async or sync
  callable ``name -> addresses``) can be injected. :class:`Dialer` is the injectable "connect one
  address" step (tests map unroutable answers such as ``10.9.9.9`` onto loopback echo servers with it).
- :class:`ChannelBridge` pumps bytes between an SSH channel and the outbound socket with backpressure in
  both directions and half-close: EOF is propagated each way; when both directions are done, or either side
  fails, both are closed. A bridge failure never affects the SSH session or other channels.

Nothing here logs: no destination, port, address, byte count or per-channel event is ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import asyncssh

from alknet.core.policy.canon import Canonical, IPAddress, canonical_ip
from alknet.core.proxy import (
    FailureReason,
    ProxyError,
    ProxyURL,
    open_socket_via,
    parse_proxy_url,
    reason_for_os_error,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ChannelBridge",
    "Dialer",
    "OutboundConnector",
    "OutboundError",
    "Resolver",
    "TcpBridgeSession",
    "UnixBridgeSession",
    "direct_dial",
    "real_path",
    "resolve",
    "system_resolver",
]

DEFAULT_CONNECT_TIMEOUT = 10.0

#: ``resolver(name) -> addresses`` (async or sync); an exception or an empty answer is
#: ``name resolution failed``.
Resolver: TypeAlias = Callable[[str], Awaitable[Sequence[IPAddress | str]] | Sequence[IPAddress | str]]

_ChanT = TypeVar("_ChanT", bound="asyncssh.SSHTCPChannel[bytes] | asyncssh.SSHUNIXChannel[bytes]")


class Dialer(Protocol):
    """Connect one TCP socket to ``address:port`` within ``timeout`` seconds (raise ``OSError`` /
    ``TimeoutError`` on failure)."""

    async def __call__(self, address: IPAddress, port: int, timeout: float) -> socket.socket: ...


class OutboundError(ConnectionError):
    """An outbound connection failed; ``str()`` is the fixed ``reason`` text (never the destination)."""

    def __init__(self, reason: FailureReason) -> None:
        super().__init__(reason.value)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason.value


def _tune(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def direct_dial(address: IPAddress, port: int, timeout: float) -> socket.socket:
    """The default :class:`Dialer`: a non-blocking TCP socket with ``SO_KEEPALIVE`` connected to exactly
    ``address:port``."""
    family = socket.AF_INET6 if isinstance(address, IPv6Address) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        _tune(sock)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def system_resolver(name: str) -> list[IPAddress]:
    """``getaddrinfo`` answers for ``name`` in resolver order, duplicates removed."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        try:
            address = ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        if address not in out:
            out.append(address)
    return out


async def resolve(resolver: Resolver, name: str) -> tuple[IPAddress, ...]:
    """Call ``resolver`` once; canonical answers (IPv4-mapped -> IPv4; unspecified or scoped answers
    dropped), order kept. Raises :class:`OutboundError` ``name resolution failed`` on any failure or an
    empty answer."""
    try:
        answer = resolver(name)
        if inspect.isawaitable(answer):
            answer = await answer
        raw = list(answer)
    except Exception:
        raise OutboundError(FailureReason.NAME_RESOLUTION_FAILED) from None
    out: list[IPAddress] = []
    for item in raw:
        try:
            parsed = ip_address(item) if isinstance(item, str) else item
        except ValueError:
            continue
        if not isinstance(parsed, IPv4Address | IPv6Address):
            continue
        checked = canonical_ip(parsed)
        if isinstance(checked, IPv4Address | IPv6Address) and checked not in out:
            out.append(checked)
    if not out:
        raise OutboundError(FailureReason.NAME_RESOLUTION_FAILED)
    return tuple(out)


class OutboundConnector:
    """Opens the socket of one tunnel channel.

    ``proxy``: the server ``--proxy`` URL (string or parsed); ``None`` = direct. ``resolver``: used only for
    host names the policy did not already resolve (at most once per channel). ``dial``: connects one address
    (default :func:`direct_dial`). ``connect_timeout`` bounds the whole attempt (all addresses, or the proxy
    connection and its handshake).
    """

    def __init__(
        self,
        *,
        proxy: str | ProxyURL | None = None,
        resolver: Resolver | None = None,
        dial: Dialer | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.proxy: ProxyURL | None = parse_proxy_url(proxy) if isinstance(proxy, str) else proxy
        self.resolver: Resolver = resolver if resolver is not None else system_resolver
        self.dial: Dialer = dial if dial is not None else direct_dial
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        via = self.proxy.describe() if self.proxy is not None else "direct"
        return f"OutboundConnector({via})"

    async def connect_tcp(
        self, target: Canonical, port: int, addresses: Sequence[IPAddress] = ()
    ) -> socket.socket:
        """A connected socket to the checked destination.

        ``target`` is the canonical ``ip`` or ``name``; ``addresses`` are the addresses the policy allowed
        when it resolved the name (or the literal). With a proxy the name (or literal) goes to the proxy;
        otherwise the allowed addresses are tried in order, resolving the name first when the policy did not.
        """
        if self.proxy is not None:
            try:
                sock = await open_socket_via(
                    self.proxy, str(target.value), port, timeout=self.connect_timeout
                )
            except ProxyError as exc:
                raise OutboundError(exc.reason) from None
            except OSError:
                raise OutboundError(FailureReason.PROXY_FAILURE) from None
            _tune(sock)
            return sock
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        if addresses:
            candidates = tuple(addresses)
        elif target.kind == "ip":
            assert isinstance(target.value, IPv4Address | IPv6Address)
            candidates = (target.value,)
        else:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    candidates = await resolve(self.resolver, str(target.value))
            except TimeoutError:
                raise OutboundError(FailureReason.NAME_RESOLUTION_FAILED) from None
        reason = FailureReason.CONNECTION_REFUSED
        for address in candidates:
            remaining = deadline - loop.time()
            if remaining <= 0:
                reason = FailureReason.TIMED_OUT
                break
            try:
                async with asyncio.timeout(remaining):
                    return await self.dial(address, port, remaining)
            except (OSError, TimeoutError) as exc:
                reason = reason_for_os_error(exc)
        raise OutboundError(reason)

    async def connect_unix(self, path: str) -> socket.socket:
        """A connected unix socket to exactly ``path`` (already the checked real path); always local."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, path)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise OutboundError(reason_for_os_error(exc)) from None
        except BaseException:
            sock.close()
            raise
        return sock


async def real_path(path: str) -> str:
    """``os.path.realpath`` off the event loop (symlinks of a ``direct-streamlocal`` target resolved)."""
    return await asyncio.to_thread(os.path.realpath, path)


# --------------------------------------------------------------------------------------------------- bridge


class _SocketSide(asyncio.Protocol):
    """The outbound socket's protocol: forwards every event to its :class:`ChannelBridge`."""

    def __init__(self, bridge: ChannelBridge[Any]) -> None:
        self.bridge = bridge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.bridge._socket_made(transport)

    def data_received(self, data: bytes) -> None:
        self.bridge._from_socket(data)

    def eof_received(self) -> bool:
        return self.bridge._socket_eof()

    def pause_writing(self) -> None:
        self.bridge._socket_full()

    def resume_writing(self) -> None:
        self.bridge._socket_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge._socket_lost(exc)


class ChannelBridge(Generic[_ChanT]):
    """One tunnel: an SSH channel session on one side, the outbound socket on the other.

    Use :meth:`start` with a connected socket before returning the bridge's :attr:`session` to asyncssh.
    ``on_done`` runs once when both sides are closed (the server's drain bookkeeping).
    """

    def __init__(self, on_done: Callable[[ChannelBridge[Any]], None] | None = None) -> None:
        self.chan: _ChanT | None = None
        self.transport: asyncio.Transport | None = None
        self._on_done = on_done
        self._ssh_eof = False
        self._socket_eof_seen = False
        self._ssh_closed = False
        self._socket_closed = False
        self._done = False
        self.peer_bridges: set[ChannelBridge[Any]] | None = None

    async def start(self, sock: socket.socket) -> None:
        """Attach the connected outbound socket (reading stays paused until the channel is open)."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: _SocketSide(self), sock=sock)

    def abort(self) -> None:
        """Drop both sides at once (server shutdown after the drain period)."""
        if self.transport is not None:
            self.transport.abort()
        if self.chan is not None:
            self.chan.abort()

    # ------------------------------------------------------------------------------------ socket side

    def _socket_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.chan is None:
            transport.pause_reading()

    def _from_socket(self, data: bytes) -> None:
        if self.chan is not None and not self._ssh_closed:
            try:
                self.chan.write(data)
            except OSError:  # the channel is already closing: nothing more can be sent
                self.transport_abort()

    def transport_abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _socket_eof(self) -> bool:
        self._socket_eof_seen = True
        if self.chan is not None and not self._ssh_closed:
            with contextlib.suppress(OSError):
                self.chan.write_eof()
        self._maybe_finish()
        return True

    def _socket_full(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def _socket_drained(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()

    def _socket_lost(self, exc: Exception | None) -> None:
        self._socket_closed = True
        if self.chan is not None and not self._ssh_closed:
            self.chan.close()  # flushes what the target sent before it went away
        self._check_done()

    # ------------------------------------------------------------------------------- channel side

    def session_made(self, chan: _ChanT) -> None:
        self.chan = chan
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        elif self._socket_closed:
            chan.close()

    def session_data(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def session_eof(self) -> bool:
        self._ssh_eof = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        self._maybe_finish()
        return True

    def session_pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def session_resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def session_lost(self, exc: Exception | None) -> None:
        self._ssh_closed = True
        if self.transport is not None and not self.transport.is_closing():
            if exc is None:
                self.transport.close()
            else:
                self.transport.abort()
        self._check_done()

    # ---------------------------------------------------------------------------------------- finish

    def _maybe_finish(self) -> None:
        if self._ssh_eof and self._socket_eof_seen:
            if self.chan is not None and not self._ssh_closed:
                self.chan.close()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    def _check_done(self) -> None:
        if self._done or not self._socket_closed or not (self._ssh_closed or self.chan is None):
            return
        self._done = True
        if self._on_done is not None:
            self._on_done(self)

    @property
    def done(self) -> bool:
        return self._done

    def mark_unused(self) -> None:
        """The channel open failed after the socket was attached: close the socket and finish."""
        self._ssh_closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        elif self.transport is None:
            self._socket_closed = True
        self._check_done()


class _BridgeSession:
    """The asyncssh session callbacks of a :class:`ChannelBridge`, shared by tcp and unix channels."""

    def __init__(self, bridge: ChannelBridge[Any]) -> None:
        self.bridge = bridge

    def connection_made(self, chan: Any) -> None:
        self.bridge.session_made(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.bridge.session_data(data)

    def eof_received(self) -> bool:
        return self.bridge.session_eof()

    def pause_writing(self) -> None:
        self.bridge.session_pause()

    def resume_writing(self) -> None:
        self.bridge.session_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.session_lost(exc)


class TcpBridgeSession(_BridgeSession, asyncssh.SSHTCPSession[bytes]):
    """The asyncssh session side of a ``direct-tcpip`` :class:`ChannelBridge`."""


class UnixBridgeSession(_BridgeSession, asyncssh.SSHUNIXSession[bytes]):
    """The asyncssh session side of a ``direct-streamlocal`` :class:`ChannelBridge`."""
