"""Outbound SOCKS5 and HTTP CONNECT proxy clients (in-house, no proxy library).

Used by the server data plane (``serve --proxy``) and by the client transport (``connect --proxy``). Target
names go to the proxy unresolved; only the proxy's own address is looked up locally. Failures raise
``ProxyError`` whose text is one of the fixed channel-open failure descriptions (``connection refused``,
``host unreachable``, ``network unreachable``, ``timed out``, ``proxy failure``). Ambient proxy variables are
never read.

- ``open_socket_via(proxy, host, port, *, timeout)``: a connected, non-blocking ``socket.socket`` positioned
  right after the handshake (the TLS transport wraps it itself).
- ``open_connection_via(proxy, host, port, *, timeout)``: the same as an asyncio ``(StreamReader,
  StreamWriter)``.
- ``open_via_proxy(url, host, port, timeout)``: ``open_connection_via`` taking a URL string
  (transport-and-ssh.md §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

from alknet.core.proxy.http_connect import HttpConnectHandshake
from alknet.core.proxy.socks5 import Socks5ClientHandshake
from alknet.core.proxy.url import (
    FailureReason,
    ProxyConnected,
    ProxyError,
    ProxyHandshake,
    ProxyKind,
    ProxyRejected,
    ProxyURL,
    ProxyURLError,
    parse_proxy_url,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "FailureReason",
    "ProxyError",
    "ProxyKind",
    "ProxyURL",
    "ProxyURLError",
    "make_handshake",
    "open_connection_via",
    "open_socket_via",
    "open_via_proxy",
    "parse_proxy_url",
    "reason_for_os_error",
]

DEFAULT_CONNECT_TIMEOUT = 10.0

_ERRNO_REASONS = {
    errno.ECONNREFUSED: FailureReason.CONNECTION_REFUSED,
    errno.ECONNRESET: FailureReason.CONNECTION_REFUSED,
    errno.EHOSTUNREACH: FailureReason.HOST_UNREACHABLE,
    errno.EHOSTDOWN: FailureReason.HOST_UNREACHABLE,
    errno.ENETUNREACH: FailureReason.NETWORK_UNREACHABLE,
    errno.ENETDOWN: FailureReason.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: FailureReason.TIMED_OUT,
}


def reason_for_os_error(
    exc: BaseException, default: FailureReason = FailureReason.CONNECTION_REFUSED
) -> FailureReason:
    """Map a failed outbound connect to its fixed failure text (transport-and-ssh.md §8).

    ``ProxyError`` keeps its reason; ``socket.gaierror`` is ``name resolution failed``; ``TimeoutError`` is
    ``timed out``; known errnos map as in §8; anything else gives ``default``.
    """
    if isinstance(exc, ProxyError):
        return exc.reason
    if isinstance(exc, socket.gaierror):
        return FailureReason.NAME_RESOLUTION_FAILED
    if isinstance(exc, TimeoutError):
        return FailureReason.TIMED_OUT
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    return default


def make_handshake(proxy: ProxyURL, host: str, port: int) -> ProxyHandshake:
    """The sans-IO handshake for ``proxy``'s kind (``ValueError`` for an unusable target host or port)."""
    if proxy.kind is ProxyKind.SOCKS5:
        return Socks5ClientHandshake(host, port, username=proxy.username, password=proxy.password)
    return HttpConnectHandshake(host, port, username=proxy.username, password=proxy.password)


async def _connect_to_proxy(proxy: ProxyURL) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError:
        raise ProxyError(FailureReason.PROXY_FAILURE, "cannot resolve the proxy address") from None
    last_detail = "proxy has no address"
    for family, type_, proto, _canon, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last_detail = (
                f"cannot connect to the proxy ({reason_for_os_error(exc, FailureReason.PROXY_FAILURE)})"
            )
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise ProxyError(FailureReason.PROXY_FAILURE, last_detail)


async def _run_handshake(sock: socket.socket, handshake: ProxyHandshake) -> ProxyConnected:
    loop = asyncio.get_running_loop()
    try:
        while True:
            out = handshake.data_to_send()
            if out:
                await loop.sock_sendall(sock, out)
            event = handshake.next_event()
            if event is not None:
                break
            handshake.receive_data(await loop.sock_recv(sock, handshake.max_read()))
    except OSError as exc:
        raise ProxyError(
            FailureReason.PROXY_FAILURE, f"proxy connection error ({type(exc).__name__})"
        ) from None
    if isinstance(event, ProxyRejected):
        raise ProxyError(event.reason, event.detail)
    if event.extra:
        raise ProxyError(FailureReason.PROXY_FAILURE, "unexpected bytes after the handshake")
    return event


async def open_socket_via(
    proxy: ProxyURL, host: str, port: int, *, timeout: float | None = DEFAULT_CONNECT_TIMEOUT
) -> socket.socket:
    """Connect to ``host:port`` through ``proxy``; return the connected non-blocking socket (caller owns it).

    ``timeout`` covers the connection to the proxy and the whole handshake: running out while reaching the
    proxy is ``proxy failure``, afterwards (the proxy is connecting to the target) ``timed out``. An unusable
    target (a name over 255 bytes, control characters) is ``name resolution failed``.
    """
    try:
        handshake = make_handshake(proxy, host, port)
    except ValueError as exc:
        raise ProxyError(FailureReason.NAME_RESOLUTION_FAILED, str(exc)) from None
    sock: socket.socket | None = None
    reached = False
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_to_proxy(proxy)
            reached = True
            await _run_handshake(sock, handshake)
    except TimeoutError:
        if sock is not None:
            sock.close()
        if reached:
            raise ProxyError(FailureReason.TIMED_OUT, "no answer from the proxy in time") from None
        raise ProxyError(FailureReason.PROXY_FAILURE, "timed out reaching the proxy") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    assert sock is not None
    return sock


async def open_connection_via(
    proxy: ProxyURL,
    host: str,
    port: int,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    limit: int = 2**16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``open_socket_via`` but return asyncio streams over the tunnelled connection."""
    sock = await open_socket_via(proxy, host, port, timeout=timeout)
    try:
        return await asyncio.open_connection(sock=sock, limit=limit)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise


async def open_via_proxy(
    url: str | ProxyURL, host: str, port: int, timeout: float | None = DEFAULT_CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The transport-and-ssh.md §10 entry point: parse ``url`` (``ProxyURLError``) and connect."""
    proxy = parse_proxy_url(url) if isinstance(url, str) else url
    return await open_connection_via(proxy, host, port, timeout=timeout)
