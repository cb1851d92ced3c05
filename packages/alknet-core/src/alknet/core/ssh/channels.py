"""Channel opens on the SSH server: checks, reserved destinations, outbound connections (transport-and-ssh.md
§8-§10, auth-and-config.md §7.3-§7.6).

Every ``direct-tcpip`` / ``direct-streamlocal`` open runs, in this order:

1. key options ``restrict`` / ``no-port-forwarding``, or a certificate without ``permit-port-forwarding``;
2. canonicalisation (invalid forms refused without any DNS query);
3. the per-key ``permitopen`` gate, then the forwarding policy loaded from the *current* ``DynamicConfig``
   (a reload affects the next channel of an existing connection); host names are resolved lazily -- at most
   once, only when an applicable address rule is reached, inside the awaitable handed to asyncssh so the
   event loop is never blocked -- and only allowed addresses are used;
4. reserved destinations (exact-case ``alknet-`` prefix; never DNS, never TCP): ``alknet-control`` port 0
   (JSON) or 1 (msgpack) goes to the handler installed in the :class:`ControlRegistry`; any other
   ``alknet-*`` name or port, or no handler installed, is ``unknown control destination``;
5. the outbound connection (:class:`~alknet.core.ssh.outbound.OutboundConnector`) to exactly the checked
   address (or through the server ``--proxy`` with the name unresolved; unix targets locally, to the
   checked real path), then a :class:`~alknet.core.ssh.outbound.ChannelBridge`.

Failures are answered with the fixed descriptions of §8 (:data:`FAILURE_TEXTS`), never containing the
target. Nothing is logged per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from alknet.core.auth.identity import Identity, KeyOptions
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig
from alknet.core.policy.canon import Canonical, Invalid
from alknet.core.policy.forwarding import evaluate_open
from alknet.core.policy.grammar import (
    NEEDS_ADDRESS,
    REASON_NO_ADDRESS,
    REASON_UNKNOWN_RESERVED,
    Action,
    Decision,
    Request,
    is_known_reserved,
)
from alknet.core.proxy import FailureReason
from alknet.core.ssh.outbound import (
    ChannelBridge,
    OutboundConnector,
    OutboundError,
    Resolver,
    TcpBridgeSession,
    UnixBridgeSession,
    real_path,
    resolve,
)
from alknet.core.transport.base import TransportInfo

__all__ = [
    "CONTROL_CODECS",
    "DEFAULT_MAX_CONTROL_CHANNELS",
    "FORWARDING_NOT_PERMITTED",
    "RESOURCE_SHORTAGE",
    "UNKNOWN_CONTROL_DESTINATION",
    "ChannelPeer",
    "ControlChannel",
    "ControlHandler",
    "ControlRegistry",
    "TunnelService",
    "open_failure",
]

log = logging.getLogger("alknet.server")

FORWARDING_NOT_PERMITTED = "forwarding not permitted"
UNKNOWN_CONTROL_DESTINATION = "unknown control destination"
RESOURCE_SHORTAGE = "resource shortage"
#: Port of ``alknet-control`` -> body codec of the call protocol.
CONTROL_CODECS = {0: "json", 1: "msgpack"}
DEFAULT_MAX_CONTROL_CHANNELS = 16


def open_failure(code: int, text: str) -> asyncssh.ChannelOpenError:
    """A channel-open failure with one of the fixed §8 descriptions."""
    return asyncssh.ChannelOpenError(code, text)


def _prohibited() -> asyncssh.ChannelOpenError:
    return open_failure(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, FORWARDING_NOT_PERMITTED)


@contextlib.contextmanager
def _outbound_errors() -> Iterator[None]:
    """Map an outbound failure to its channel-open failure; an exception text may name the destination, so
    only its type is logged (at DEBUG)."""
    try:
        yield
    except asyncssh.ChannelOpenError:
        raise
    except OutboundError as exc:
        raise _connect_failed(exc.reason) from None
    except Exception as exc:
        log.debug("channel open failed: %s", type(exc).__name__)
        raise _connect_failed(FailureReason.CONNECTION_REFUSED) from None


def _connect_failed(reason: FailureReason | str) -> asyncssh.ChannelOpenError:
    return open_failure(asyncssh.OPEN_CONNECT_FAILED, str(reason))


def _shortage() -> asyncssh.ChannelOpenError:
    return open_failure(asyncssh.OPEN_RESOURCE_SHORTAGE, RESOURCE_SHORTAGE)


# ------------------------------------------------------------------------------------------ control hook


@dataclass(frozen=True, slots=True)
class ControlChannel:
    """One accepted ``alknet-control`` channel, handed to the installed :data:`ControlHandler`.

    ``codec`` is ``"json"`` (port 0) or ``"msgpack"`` (port 1); ``identity`` and ``transport`` are the SSH
    connection's; ``remote_addr`` is the peer IP as logged (``-`` for iroh). The channel ends when the
    handler returns (the writer is then closed) or the SSH connection ends.
    """

    reader: asyncssh.SSHReader[bytes]
    writer: asyncssh.SSHWriter[bytes]
    codec: str
    identity: Identity
    transport: TransportInfo | None
    remote_addr: str


#: Serves one control channel for its whole life.
ControlHandler = Callable[[ControlChannel], Awaitable[None]]


class ControlRegistry:
    """Where the call-protocol layer plugs into the SSH server.

    ``handler`` serves accepted ``alknet-control`` channels; while it is ``None`` every such open is refused
    with ``unknown control destination``. ``max_channels`` (default 16) bounds the control channels open at
    once on one SSH connection; one more is refused with ``resource shortage``.
    """

    def __init__(
        self, handler: ControlHandler | None = None, *, max_channels: int = DEFAULT_MAX_CONTROL_CHANNELS
    ) -> None:
        if max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        self.handler = handler
        self.max_channels = max_channels

    def install(self, handler: ControlHandler | None) -> None:
        """Install (or, with ``None``, remove) the handler; applies to the next channel open."""
        self.handler = handler

    def __repr__(self) -> str:
        return (
            f"ControlRegistry(handler={'set' if self.handler else 'none'}, max_channels={self.max_channels})"
        )


# ------------------------------------------------------------------------------------------ per connection


@dataclass(slots=True)
class ChannelPeer:
    """The authenticated side of one SSH connection, as the channel checks see it."""

    identity: Identity
    options: KeyOptions
    port_forwarding: bool
    transport: str
    info: TransportInfo | None
    remote_addr: str
    control_channels: int = 0
    _bridges: set[ChannelBridge[Any]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def bridges(self) -> set[ChannelBridge[Any]]:
        """The connection's open tunnel bridges. The set is made with the first one: most connections of a
        busy server are idle, and an empty set is 216 bytes."""
        bridges = self._bridges
        if bridges is None:
            bridges = self._bridges = set()
        return bridges


# ------------------------------------------------------------------------------------------ the service


class TunnelService:
    """Channel-open handling shared by every connection of one server (``dynamic`` is read per open)."""

    def __init__(
        self,
        dynamic: AtomicRef[DynamicConfig],
        connector: OutboundConnector,
        control: ControlRegistry | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.dynamic = dynamic
        self.connector = connector
        self.control = control if control is not None else ControlRegistry()
        self.resolver: Resolver = resolver if resolver is not None else connector.resolver
        self.shutting_down = False
        self.bridges: set[ChannelBridge[Any]] = set()
        self.control_open: set[asyncssh.SSHWriter[bytes]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def proxy(self) -> bool:
        return self.connector.proxy is not None

    @property
    def active(self) -> int:
        """Open tunnel and control channels (what the shutdown drain waits for)."""
        return len(self.bridges) + len(self.control_open)

    async def wait_idle(self) -> None:
        """Return when no tunnel or control channel is open."""
        while self.active:
            self._idle.clear()
            await self._idle.wait()

    def _changed(self) -> None:
        if not self.active:
            self._idle.set()

    # ----------------------------------------------------------------------------------------- checks

    def _decide(self, peer: ChannelPeer, req: Request) -> Decision:
        """Steps 1-4 without DNS (``needs-address`` when an applicable address rule is reached)."""
        policy = self.dynamic.load().forwarding
        return policy.evaluate(
            req,
            peer.identity,
            peer.transport,
            options=peer.options,
            port_forwarding=peer.port_forwarding,
            proxy=self.proxy,
        )

    @staticmethod
    def _refusal(decision: Decision) -> asyncssh.ChannelOpenError | None:
        if decision.action == Action.ALLOW:
            return None
        if decision.reason == REASON_UNKNOWN_RESERVED:
            return open_failure(asyncssh.OPEN_CONNECT_FAILED, UNKNOWN_CONTROL_DESTINATION)
        if decision.reason == REASON_NO_ADDRESS:
            return _connect_failed(FailureReason.NAME_RESOLUTION_FAILED)
        return _prohibited()

    # ---------------------------------------------------------------------------------- direct-tcpip

    def open_tcp(self, peer: ChannelPeer, dest_host: str, dest_port: int) -> object:
        """``connection_requested``: raise ``ChannelOpenError`` for what needs no I/O to refuse; return the
        control stream handler for ``alknet-control``; otherwise an awaitable that resolves (if needed),
        re-checks and connects, returning the session asyncssh confirms the channel with."""
        if self.shutting_down:
            raise _shortage()
        req = Request(dest_host, dest_port)
        decision = self._decide(peer, req)
        if decision.action != NEEDS_ADDRESS:
            refusal = self._refusal(decision)
            if refusal is not None:
                raise refusal
        canon = req.canonical()
        if isinstance(canon, Invalid):  # pragma: no cover - evaluate already refused it
            raise _prohibited()
        if canon.kind == "reserved":
            return self._control(peer, str(canon.value), dest_port)
        return self._connect_tcp(peer, req, canon, decision)

    def _control(self, peer: ChannelPeer, name: str, port: int) -> Callable[..., Awaitable[None]]:
        handler = self.control.handler
        if handler is None or not is_known_reserved(name, port):
            raise open_failure(asyncssh.OPEN_CONNECT_FAILED, UNKNOWN_CONTROL_DESTINATION)
        if peer.control_channels >= self.control.max_channels:
            raise _shortage()
        peer.control_channels += 1
        codec = CONTROL_CODECS[port]

        async def serve(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
            self.control_open.add(writer)
            try:
                await handler(
                    ControlChannel(reader, writer, codec, peer.identity, peer.info, peer.remote_addr)
                )
            except Exception:
                log.debug("control channel handler failed", exc_info=True)
            finally:
                peer.control_channels -= 1
                self.control_open.discard(writer)
                self._changed()
                writer.close()

        return serve

    async def _connect_tcp(
        self, peer: ChannelPeer, req: Request, canon: Canonical, decision: Decision
    ) -> TcpBridgeSession:
        with _outbound_errors():
            if decision.action == NEEDS_ADDRESS:
                decision = await self._resolve_and_decide(peer, req, canon)
            assert req.port is not None
            sock = await self.connector.connect_tcp(canon, req.port, decision.addresses)
            return TcpBridgeSession(await self._start_bridge(peer, sock))

    async def _resolve_and_decide(self, peer: ChannelPeer, req: Request, canon: Canonical) -> Decision:
        """Lazy DNS: one lookup, then one decision per answer (only allowed addresses are kept)."""
        answers = await resolve(self.resolver, str(canon.value))
        policy = self.dynamic.load().forwarding

        def fixed(_name: str) -> tuple[Any, ...]:
            return answers

        decision = await evaluate_open(
            policy,
            req,
            peer.identity,
            peer.transport,
            options=peer.options,
            port_forwarding=peer.port_forwarding,
            resolver=fixed,
            proxy=self.proxy,
        )
        refusal = self._refusal(decision)
        if refusal is not None or decision.action != Action.ALLOW:
            raise refusal or _prohibited()
        return decision

    async def _start_bridge(self, peer: ChannelPeer, sock: socket.socket) -> ChannelBridge[Any]:
        """Attach the connected socket to a new bridge owned by ``peer``; refused once shutting down."""
        bridge: ChannelBridge[Any] = ChannelBridge(self._bridge_done)
        self.bridges.add(bridge)
        peer.bridges.add(bridge)
        bridge.peer_bridges = peer.bridges
        try:
            await bridge.start(sock)
        except BaseException:
            sock.close()
            bridge.mark_unused()
            self._bridge_done(bridge)
            raise
        if self.shutting_down:
            bridge.mark_unused()
            raise _shortage()
        return bridge

    def _bridge_done(self, bridge: ChannelBridge[Any]) -> None:
        self.bridges.discard(bridge)
        if bridge.peer_bridges is not None:
            bridge.peer_bridges.discard(bridge)
        self._changed()

    def peer_closed(self, peer: ChannelPeer) -> None:
        """The SSH connection ended: finish the bridges whose channel was never confirmed."""
        for bridge in list(peer._bridges or ()):
            if bridge.chan is None:
                bridge.mark_unused()

    # ------------------------------------------------------------------------------ direct-streamlocal

    def open_unix(self, peer: ChannelPeer, dest_path: str) -> object:
        """``unix_connection_requested``: checks on the requested path (refusing invalid forms at once), then,
        in the returned awaitable, the same checks on its real path, and a local connect to that path."""
        if self.shutting_down:
            raise _shortage()
        req = Request("unix:" + dest_path, None)
        refusal = self._refusal(self._decide(peer, req))
        if refusal is not None:
            raise refusal
        canon = req.canonical()
        if isinstance(canon, Invalid):  # pragma: no cover - evaluate already refused it
            raise _prohibited()
        return self._connect_unix(peer, str(canon.value))

    async def _connect_unix(self, peer: ChannelPeer, path: str) -> UnixBridgeSession:
        with _outbound_errors():
            real = await real_path(path)
            real_req = Request("unix:" + real, None)
            refusal = self._refusal(self._decide(peer, real_req))
            if refusal is not None:
                raise refusal
            canon = real_req.canonical()
            if isinstance(canon, Invalid):
                raise _prohibited()
            sock = await self.connector.connect_unix(str(canon.value))
            return UnixBridgeSession(await self._start_bridge(peer, sock))

    # ---------------------------------------------------------------------------------------- shutdown

    def abort_all(self) -> None:
        """After the drain period: drop every tunnel and control channel still open."""
        for bridge in list(self.bridges):
            bridge.abort()
        for writer in list(self.control_open):
            writer.channel.abort()
