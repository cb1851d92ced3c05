"""The ``tls`` transport (transport-and-ssh.md §3, auth-and-config.md §10).

Client: TCP (optionally through ``--proxy``), then TLS 1.2+ via stdlib ``ssl`` with SNI (none for IP literals)
and ALPN ``http/1.1``; exactly one verification mode (:class:`~alknet.core.tls.context.TlsVerify`). A pin is
checked right after the handshake, before the SSH protocol is attached, so a mismatch sends no SSH byte.

Server: the listener accepts the socket itself, peeks (``MSG_PEEK``) at the first TLS record (at most 16,389
bytes, 5 s, polling with short sleeps), parses SNI and ALPN, picks a context (the current one from the
listener's ``AtomicRef[ssl.SSLContext]`` unless a selector decides otherwise) and runs the handshake with
``loop.connect_accepted_socket(..., ssl=ctx, ssl_handshake_timeout=10)``. A failed handshake drops that one
connection at DEBUG; the listener keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TypeVar

from alknet.core.config.atomic import AtomicRef
from alknet.core.tls.clienthello import MAX_RECORD, ClientHelloInfo, parse_client_hello, record_bytes_needed
from alknet.core.tls.context import DEFAULT_ALPN, TlsVerify, client_context
from alknet.core.tls.selfsigned import cert_fingerprint

from .base import (
    Admit,
    HeldProtocol,
    Transport,
    TransportInfo,
    TransportKind,
    attach,
    format_hostport,
    held_protocol,
    normalise_addr,
    set_transport_info,
)
from .tcp import DEFAULT_CONNECT_TIMEOUT, Dial, SocketAcceptor, open_stream

__all__ = [
    "ACME_TLS_ALPN",
    "DEFAULT_TLS_PORT",
    "SELF_SIGNED_MESSAGE",
    "ContextSelector",
    "TlsAcceptor",
    "TlsPinMismatch",
    "TlsTransport",
    "TlsVerificationError",
    "peek_first_record",
]

log = logging.getLogger("alknet.transport")

P = TypeVar("P", bound=asyncio.BaseProtocol)

SELF_SIGNED_MESSAGE = (
    "TLS certificate verification failed: self-signed certificate (use --tls-pin, --tls-ca or --tls-insecure)"
)
#: A handshake that negotiates this ALPN (ACME TLS-ALPN-01 validation) is closed and never reaches SSH.
ACME_TLS_ALPN = "acme-tls/1"
#: Default tls listen ``127.0.0.1:2443`` and client port (443 is always given explicitly).
DEFAULT_TLS_PORT = 2443
PEEK_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0

#: Picks the context for a connection from its parsed ClientHello (``None`` = not parseable: normal path).
#: Returning ``None`` closes the connection at once.
ContextSelector = Callable[[ClientHelloInfo | None], ssl.SSLContext | None]

_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19


class TlsVerificationError(ConnectionError):
    """The server certificate did not pass the configured verification (retried by the reconnect loop)."""


class TlsPinMismatch(TlsVerificationError):
    """``--tls-pin`` did not match: ``TLS certificate pin mismatch: expected <pin>, got <sha256>``."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"TLS certificate pin mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _verification_error(exc: ssl.SSLCertVerificationError) -> TlsVerificationError:
    if exc.verify_code in (_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, _X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN):
        return TlsVerificationError(SELF_SIGNED_MESSAGE)
    detail = exc.verify_message or exc.reason or str(exc)
    return TlsVerificationError(f"TLS certificate verification failed: {detail}")


class TlsTransport(Transport):
    """Client side of ``tls``: ``asyncssh.connect(host, port, tunnel=TlsTransport(host, port, ...))``."""

    kind = TransportKind.TLS

    def __init__(
        self,
        host: str,
        port: int,
        *,
        verify: TlsVerify | None = None,
        server_name: str | None = None,
        dial: Dial | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        alpn: Sequence[str] = DEFAULT_ALPN,
    ) -> None:
        self.host = host
        self.port = port
        self.verify = verify if verify is not None else TlsVerify()
        self.dial = dial
        self.connect_timeout = connect_timeout
        self.sni: str | None = server_name or (None if _is_ip_literal(host) else host)
        # CA mode checks the name (an IP literal is matched against IP SANs and sends no SNI).
        self._check_name = server_name or host.strip("[]")
        self._ctx = client_context(self.verify, alpn=alpn)

    def describe(self) -> str:
        sni = f"sni {self.sni}" if self.sni else "no sni"
        via = " via proxy" if self.dial is not None else ""
        return f"tls://{format_hostport(self.host, self.port)} ({sni}){via}"

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str | None = None, port: int | None = None
    ) -> tuple[asyncio.Transport, P]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        raw = await open_stream(self.host, self.port, dial=self.dial, timeout=self.connect_timeout)
        held = held_protocol(raw)
        if held is not None and (held.buffered or held.eof or held.lost):
            raw.abort()
            raise ConnectionError("the server spoke before the TLS handshake")
        server_hostname = self._check_name if self.verify.mode == "ca" else self.sni
        tls_held = HeldProtocol()
        try:
            tls = await loop.start_tls(
                raw,
                tls_held,
                self._ctx,
                server_hostname=server_hostname,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()),
            )
        except ssl.SSLCertVerificationError as exc:
            raw.abort()
            raise _verification_error(exc) from None
        except BaseException:
            raw.abort()
            raise
        if tls is None:
            raw.abort()
            raise ConnectionError("TLS handshake did not produce a transport")
        tls_held.connection_made(tls)
        ssl_object = tls.get_extra_info("ssl_object")
        if self.verify.mode == "pin":
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            actual = cert_fingerprint(der) if der else "none"
            assert self.verify.pin is not None
            if actual != self.verify.pin:
                tls.abort()
                raise TlsPinMismatch(self.verify.pin, actual)
        elif self.verify.mode == "insecure":
            log.warning("TLS certificate not verified (--tls-insecure): %s", self.describe())
        info = TransportInfo(
            kind=self.kind,
            remote_addr=normalise_addr(tls.get_extra_info("peername")),
            local_addr=normalise_addr(tls.get_extra_info("sockname")),
            server_name=self.sni,
            alpn=ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
        )
        set_transport_info(tls, info)
        protocol = protocol_factory()
        try:
            attach(tls, protocol)
        except BaseException:
            tls.abort()
            raise
        return tls, protocol

    async def aclose(self) -> None:
        return None


async def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


async def peek_first_record(sock: socket.socket, timeout: float = PEEK_TIMEOUT) -> bytes:
    """``MSG_PEEK`` until the first TLS record is complete, the bytes cannot be TLS, EOF, or ``timeout``.

    Nothing is consumed: the TLS handshake later reads the same bytes. After the first bytes arrive the socket
    stays readable, so this polls with short sleeps instead of spinning on a reader callback.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if not await _wait_readable(sock, timeout):
        return b""
    data = b""
    interval = 0.002
    while True:
        try:
            data = sock.recv(MAX_RECORD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return data
        else:
            if not data:
                return b""
            if record_bytes_needed(data) == 0 or len(data) >= MAX_RECORD:
                return data
        remaining = deadline - loop.time()
        if remaining <= 0:
            return data
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 2, 0.05)


class TlsAcceptor(SocketAcceptor):
    """Server side of ``tls``; each connection uses ``contexts.load()`` at accept time (hot swap)."""

    kind = TransportKind.TLS

    def __init__(
        self,
        host: str,
        port: int,
        contexts: AtomicRef[ssl.SSLContext],
        *,
        admit: Admit | None = None,
        select: ContextSelector | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        peek_timeout: float = PEEK_TIMEOUT,
        backlog: int = 128,
    ) -> None:
        super().__init__(host, port, admit=admit, backlog=backlog)
        self.contexts = contexts
        self.select = select
        self.handshake_timeout = handshake_timeout
        self.peek_timeout = peek_timeout

    async def _establish(
        self, sock: socket.socket, info: TransportInfo
    ) -> tuple[asyncio.Transport, TransportInfo] | None:
        loop = asyncio.get_running_loop()
        first = await peek_first_record(sock, self.peek_timeout)
        hello = parse_client_hello(first) if first else None
        ctx = self.select(hello) if self.select is not None else self.contexts.load()
        if ctx is None:
            sock.close()
            return None
        transport, _ = await loop.connect_accepted_socket(
            HeldProtocol, sock, ssl=ctx, ssl_handshake_timeout=self.handshake_timeout
        )
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == ACME_TLS_ALPN:
            with contextlib.suppress(Exception):
                transport.close()
            return None
        info = dataclasses.replace(info, server_name=hello.server_name if hello else None, alpn=alpn)
        set_transport_info(transport, info)
        return transport, info
