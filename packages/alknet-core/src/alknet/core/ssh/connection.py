"""One SSH connection of an ``SshServer`` (transport-and-ssh.md §8-§11): the authenticated peer, its channel
opens (handed to :class:`~alknet.core.ssh.channels.TunnelService`) and its remote forwards (leases).

Authentication, the connection log lines and the session refusals are inherited from
:class:`~alknet.core.auth.ssh.AlknetSSHServer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from alknet.core.auth.identity import Identity
from alknet.core.auth.ssh import AlknetSSHServer
from alknet.core.ssh.channels import ChannelPeer
from alknet.core.ssh.leases import LeaseListener, lease_host
from alknet.core.ssh.packets import skip_automatic_ignores

if TYPE_CHECKING:
    from alknet.core.ssh.server import SshServer

__all__ = ["SessionInfo", "TunnelConnection"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live SSH connection (for status output): never a destination or a byte count."""

    remote_addr: str
    transport: str
    identity: Identity | None
    opened_at: float
    peer_id: str | None = None

    @property
    def identity_id(self) -> str | None:
        return self.identity.id if self.identity is not None else None


class TunnelConnection(AlknetSSHServer):
    """One SSH connection of an :class:`SshServer`: auth (inherited), channel opens and remote forwards."""

    def __init__(self, server: SshServer) -> None:
        super().__init__(server.auth_context)
        self.server = server
        self.peer: ChannelPeer | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        super().connection_made(conn)
        skip_automatic_ignores(conn)
        self.server.connections.add(self)

    def authenticated(self) -> None:
        assert self.identity is not None
        self.peer = ChannelPeer(
            identity=self.identity,
            options=self.key_options,
            port_forwarding=self.port_forwarding,
            transport=self.transport_kind,
            info=self.info,
            remote_addr=self.remote_addr,
        )

    def closed(self) -> None:
        self.server.connections.discard(self)
        self.server.leases.release_owner(self)
        if self.peer is not None:
            self.server.channels.peer_closed(self.peer)

    @property
    def is_closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------------------------------- channels

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        if self.peer is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding not permitted"
            )
        session = self.server.channels.open_tcp(self.peer, dest_host, dest_port)
        return self._channel(unix=False), session

    def unix_connection_requested(self, dest_path: str) -> Any:
        if self.peer is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding not permitted"
            )
        session = self.server.channels.open_unix(self.peer, dest_path)
        return self._channel(unix=True), session

    def _channel(self, *, unix: bool) -> Any:
        """A forwarded channel with the server's window and packet size (asyncssh's own defaults are
        2 MiB / 32 KiB for forwarded channels, whatever the connection options say)."""
        assert self.conn is not None
        opts = self.server.options
        create = self.conn.create_unix_channel if unix else self.conn.create_tcp_channel
        return create(window=opts.window, max_pktsize=opts.max_pktsize)

    # ----------------------------------------------------------------------------------- remote forwards

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        return self._bind(listen_host, listen_port)

    async def _bind(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        server, peer, conn = self.server, self.peer, self.conn
        if peer is None or conn is None or server.channels.shutting_down or self._closed:
            return False
        policy = server.dynamic.load().forwarding
        decision = policy.evaluate_bind(
            listen_host,
            listen_port,
            peer.identity,
            peer.transport,
            options=peer.options,
            port_forwarding=peer.port_forwarding,
        )
        host = lease_host(listen_host)
        if not decision.allowed or host is None:
            return False
        lease = server.leases.claim((host, listen_port), self, peer.identity.id)
        if lease is None:
            return False
        # all interfaces: "" binds IPv4 and IPv6, 0.0.0.0 / :: only their family; otherwise the canonical host
        bind_host = host if host != "*" else ("" if listen_host in ("", "*") else listen_host)
        try:
            inner = await conn.forward_local_port(bind_host, listen_port, listen_host, listen_port)
        except (OSError, asyncssh.Error):
            server.leases.release(lease)
            return False
        if self._closed or server.channels.shutting_down:
            inner.close()
            server.leases.release(lease)
            return False
        if server.leases.record(lease, inner) is None:
            return False
        return LeaseListener(server.leases, lease, inner)

    # ----------------------------------------------------------------------------------------- control

    def disconnect(self, code: int, reason: str) -> None:
        if self.conn is not None and not self._closed:
            self.conn.disconnect(code, reason)

    def session_info(self) -> SessionInfo:
        return SessionInfo(
            remote_addr=self.remote_addr,
            transport=self.transport_kind,
            identity=self.identity,
            opened_at=self.opened_wall,
            peer_id=self.peer_id,
        )
