"""L1 transport abstractions (transport-and-ssh.md §1).

Every transport hands out ordinary asyncio transports so that asyncssh and the raw-framing interface attach
plain ``asyncio.Protocol`` objects to them. Accepted connections start in the *held* state: a
:class:`HeldProtocol` buffers incoming bytes and EOF until :func:`attach` hands the transport to the real
protocol, replaying everything in order.

This package never imports asyncssh. :class:`AcceptorServer` satisfies asyncssh's ``tunnel=`` listener
contract by duck typing: asyncssh calls ``create_server(factory, host, port)`` with a factory taking
``(orig_host, orig_port)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .coalesce import CoalescingTransport

__all__ = [
    "TRANSPORT_INFO_KEY",
    "AcceptorClosed",
    "AcceptorServer",
    "Admit",
    "BindError",
    "Gate",
    "HeldProtocol",
    "Release",
    "RunningServer",
    "Transport",
    "TransportAcceptor",
    "TransportInfo",
    "TransportKind",
    "attach",
    "feed_protocol",
    "format_hostport",
    "held_protocol",
    "normalise_addr",
    "set_transport_info",
    "transport_info",
]

log = logging.getLogger("alknet.transport")

TRANSPORT_INFO_KEY = "alknet.transport_info"

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: Called once when an admitted connection is over (handshake failure, gate drop, or connection lost).
Release = Callable[[], None]
#: Called synchronously at raw accept, before any byte is read or written; ``None`` refuses the connection.
Admit = Callable[["TransportInfo"], Release | None]
#: Run per accepted connection by :class:`AcceptorServer` before SSH is attached; ``False`` drops it.
Gate = Callable[[asyncio.Transport, "TransportInfo"], Awaitable[bool]]


class TransportKind(enum.StrEnum):
    TCP = "tcp"
    TLS = "tls"
    QUIC = "quic"
    IROH = "iroh"


def normalise_addr(addr: Any) -> tuple[str, int] | None:
    """A socket address as ``(ip, port)``; IPv4-mapped IPv6 becomes IPv4, anything unusable ``None``."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    host, port = addr[0], addr[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return (host, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (str(ip.ipv4_mapped), port)
    return (host, port)


def format_hostport(host: str, port: int) -> str:
    """``HOST:PORT`` with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class TransportInfo:
    kind: TransportKind
    remote_addr: tuple[str, int] | None
    local_addr: tuple[str, int] | None
    server_name: str | None = None
    peer_id: str | None = None
    alpn: str | None = None
    listener: str = ""

    def rate_key(self) -> str:
        """The key for per-peer limits: the remote IP, or ``iroh:<peer_id>``."""
        if self.kind is TransportKind.IROH and self.peer_id:
            return f"iroh:{self.peer_id}"
        if self.remote_addr is not None:
            return self.remote_addr[0]
        return "-"


class BindError(OSError):
    """A listener could not bind; ``str()`` is one line such as
    ``cannot listen on tcp 127.0.0.1:2222: address already in use``."""


class AcceptorClosed(ConnectionError):
    """``accept()`` was called on (or was waiting when) the acceptor closed."""


def set_transport_info(transport: asyncio.BaseTransport, info: TransportInfo) -> None:
    """Make ``transport.get_extra_info("alknet.transport_info")`` return ``info``.

    asyncio's own transports (plain TCP sockets: what most accepted connections are) answer
    ``get_extra_info`` from their per-transport ``_extra`` dict, which asyncio itself fills after construction;
    ``info`` goes there, at no per-connection cost. Any other transport gets a wrapper around its
    ``get_extra_info`` (a closure and a bound method per transport).
    """
    cls = type(transport)
    extra = getattr(transport, "_extra", None)
    if (
        isinstance(extra, dict)
        and cls.get_extra_info is asyncio.BaseTransport.get_extra_info
        and cls.__module__.startswith("asyncio.")
    ):
        extra[TRANSPORT_INFO_KEY] = info
        return
    original = transport.get_extra_info

    def get_extra_info(name: str, default: Any = None) -> Any:
        if name == TRANSPORT_INFO_KEY:
            return info
        return original(name, default)

    transport.get_extra_info = get_extra_info  # type: ignore[method-assign]


def transport_info(transport: asyncio.BaseTransport) -> TransportInfo | None:
    info = transport.get_extra_info(TRANSPORT_INFO_KEY)
    return info if isinstance(info, TransportInfo) else None


def feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to a ``Protocol`` or a ``BufferedProtocol``."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
    else:
        raise TypeError(f"cannot deliver data to {type(protocol).__name__}")


class HeldProtocol(asyncio.Protocol):
    """Initial protocol of an accepted (or dialled) connection: buffers bytes and EOF until :func:`attach`.

    Above ``max_buffer`` buffered bytes it pauses reading (attach resumes it). Gates inspect :attr:`buffered`
    and wait with :meth:`wait_changed`; nothing is consumed by looking.
    """

    def __init__(self, max_buffer: int = 256 * 1024) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._max = max_buffer
        self._paused = False
        self._ssl = False
        self.eof = False
        self.lost = False
        self.lost_exc: Exception | None = None
        self._changed = asyncio.Event()
        self._on_lost: list[Release] = []
        self._detached = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._ssl = transport.get_extra_info("sslcontext") is not None
        with contextlib.suppress(TypeError):
            _HELD[transport] = self

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._changed.set()
        if len(self._buf) >= self._max and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._changed.set()
        # Keep a plain stream half-open so the attached protocol decides; SSL transports close regardless.
        return not self._ssl

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self._changed.set()
        callbacks, self._on_lost = self._on_lost, []
        for cb in callbacks:
            _run_release(cb)

    # helpers
    @property
    def buffered(self) -> bytes:
        return bytes(self._buf)

    def add_release(self, release: Release) -> None:
        """Run ``release`` once when the connection ends, whether still held or after :func:`attach`."""
        if self.lost:
            _run_release(release)
        else:
            self._on_lost.append(release)

    async def wait_changed(self) -> None:
        """Wait until more data, EOF or connection loss arrives (returns at once if something is new)."""
        await self._changed.wait()
        self._changed.clear()

    def _take(self) -> tuple[bytes, bool, bool, Exception | None, bool, list[Release]]:
        data = bytes(self._buf)
        self._buf.clear()
        self._detached = True
        callbacks, self._on_lost = self._on_lost, []
        return data, self.eof, self.lost, self.lost_exc, self._paused, callbacks


# SSL transports forget their protocol once the connection is lost; this keeps the held one findable.
_HELD: weakref.WeakKeyDictionary[asyncio.BaseTransport, HeldProtocol] = weakref.WeakKeyDictionary()


def held_protocol(transport: asyncio.BaseTransport) -> HeldProtocol | None:
    """The :class:`HeldProtocol` of a transport that has not been attached yet, else ``None``."""
    try:
        held = _HELD.get(transport)
    except TypeError:  # not weak-referenceable
        held = None
    if held is None:
        current = transport.get_protocol()
        held = current if isinstance(current, HeldProtocol) else None
    return None if held is None or held._detached else held


def _run_release(release: Release) -> None:
    try:
        release()
    except Exception:
        log.exception("connection release callback failed")


class _LostNotifier(asyncio.Protocol):
    """Forwards every event to ``inner`` and runs the release callbacks after ``connection_lost``."""

    __slots__ = ("_callbacks", "_inner")

    def __init__(self, inner: asyncio.Protocol, callbacks: list[Release]) -> None:
        self._inner = inner
        self._callbacks = callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            callbacks, self._callbacks = self._callbacks, []
            for cb in callbacks:
                _run_release(cb)


def attach(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    replay: bytes = b"",
    *,
    coalesce: bool = True,
) -> None:
    """Hand a held transport to ``protocol``: ``set_protocol`` + ``connection_made`` + ``replay`` + the bytes
    the :class:`HeldProtocol` buffered + a pending EOF (+ a pending ``connection_lost``), all before any new
    ``data_received`` can run. Works on a transport that is not held, too (then only ``replay`` is
    delivered). With ``coalesce`` (the default) the protocol writes through a
    :class:`~alknet.core.transport.coalesce.CoalescingTransport`: its writes of one loop iteration become one
    send."""
    held = held_protocol(transport)
    pending, eof, lost, lost_exc, paused = b"", False, False, None, False
    callbacks: list[Release] = []
    if held is not None:
        pending, eof, lost, lost_exc, paused, callbacks = held._take()
        with contextlib.suppress(TypeError):
            _HELD.pop(transport, None)
    target: asyncio.BaseProtocol = protocol
    if callbacks and not lost:
        if isinstance(protocol, asyncio.Protocol):
            target = _LostNotifier(protocol, callbacks)
        else:
            # BufferedProtocol consumers (none in alknet today): release now rather than never.
            for cb in callbacks:
                _run_release(cb)
    transport.set_protocol(target)
    if coalesce and isinstance(transport, asyncio.Transport):
        protocol.connection_made(CoalescingTransport(transport))
    else:
        protocol.connection_made(transport)
    if paused and isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
        transport.resume_reading()
    data = replay + pending
    if data:
        feed_protocol(protocol, data)
    if eof and isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
        keep_open = protocol.eof_received()
        if not keep_open and not transport.is_closing():
            transport.close()
    if lost:
        protocol.connection_lost(lost_exc)


class Transport(ABC):
    """Client side: satisfies asyncssh's ``tunnel=`` connector contract (``create_connection``)."""

    kind: TransportKind

    @abstractmethod
    def describe(self) -> str:
        """E.g. ``tls://example.com:443 (sni example.com)``; never includes secrets."""

    @abstractmethod
    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str | None = None, port: int | None = None
    ) -> tuple[asyncio.Transport, P]:
        """Dial, wrap (TLS, ...) and return ``(transport, protocol_factory())`` with the protocol attached.

        ``host``/``port`` are what asyncssh was given; the transport's own configured target is authoritative.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release shared resources (endpoints); connections already handed out stay open."""


class TransportAcceptor(ABC):
    """Server side: binds in :meth:`start`, hands out held transports from :meth:`accept`."""

    kind: TransportKind
    listen_addrs: list[str]
    endpoint_id: str | None = None

    @abstractmethod
    async def start(self) -> None:
        """Bind; raises :class:`BindError` with a one-line reason."""

    @abstractmethod
    async def accept(self) -> tuple[asyncio.Transport, TransportInfo]:
        """The next connection, in the held state; raises :class:`AcceptorClosed` once closed."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop listening; connections already accepted stay open."""

    @property
    def started(self) -> bool:
        return bool(self.listen_addrs)


class RunningServer:
    """What :meth:`AcceptorServer.create_server` returns; shaped like ``asyncio.AbstractServer``."""

    def __init__(self, owner: AcceptorServer, task: asyncio.Task[None]) -> None:
        self._owner = owner
        self._task = task
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._owner._shutdown()
        self._closed.set()

    async def wait_closed(self) -> None:
        if self._close_task is None:
            self.close()
        await self._closed.wait()

    def is_serving(self) -> bool:
        return not self._task.done()

    def get_addresses(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for addr in self._owner.acceptor.listen_addrs:
            host, _, port = addr.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    def get_port(self) -> int:
        ports = {port for _, port in self.get_addresses()}
        return ports.pop() if len(ports) == 1 else 0


class AcceptorServer:
    """asyncssh ``tunnel=`` adapter for listening: ``asyncssh.listen(tunnel=AcceptorServer(acceptor), ...)``.

    For each accepted ``(transport, info)`` it runs ``gates`` in order (rate limit, stealth peek, logging,
    ...); if all pass it calls ``factory(orig_host, orig_port)`` and :func:`attach`. A gate that returns
    ``False`` has usually closed the transport itself (e.g. after the stealth 404); otherwise it is aborted
    here. Errors in a gate or in the factory drop that one connection at DEBUG; the accept loop keeps running.
    """

    def __init__(self, acceptor: TransportAcceptor, gates: Sequence[Gate] = ()) -> None:
        self.acceptor = acceptor
        self.gates = tuple(gates)
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: RunningServer | None = None

    def __repr__(self) -> str:
        return f"AcceptorServer({self.acceptor.kind}, {self.acceptor.listen_addrs})"

    async def create_server(
        self, session_factory: Callable[..., Any], listen_host: str = "", listen_port: int = 0
    ) -> RunningServer:
        if self._server is not None:
            raise RuntimeError("AcceptorServer.create_server() may be called once")
        if not self.acceptor.started:
            await self.acceptor.start()
        task = asyncio.get_running_loop().create_task(self._accept_loop(session_factory))
        self._server = RunningServer(self, task)
        return self._server

    # asyncssh's tunnel protocol (only used for string tunnels, provided for completeness)
    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept_loop(self, factory: Callable[..., Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                transport, info = await self.acceptor.accept()
            except AcceptorClosed:
                return
            except Exception as exc:
                log.debug("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handle(factory, transport, info))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(
        self, factory: Callable[..., Any], transport: asyncio.Transport, info: TransportInfo
    ) -> None:
        try:
            for gate in self.gates:
                if not await gate(transport, info):
                    if not transport.is_closing():
                        transport.abort()
                    return
            if transport.is_closing():
                return
            orig = info.remote_addr or ("", 0)
            protocol = factory(orig[0], orig[1])
            attach(transport, protocol)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except Exception as exc:
            log.debug("connection dropped before attach: %s", exc)
            transport.abort()

    async def _shutdown(self) -> None:
        await self.acceptor.aclose()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
