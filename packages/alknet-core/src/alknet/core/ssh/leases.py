"""Remote forwards (``tcpip-forward``) and their leases (transport-and-ssh.md §11, auth-and-config.md §7.7).

A lease is one bound remote-forward listener, keyed by (canonical bind address, port) and owned by one SSH
connection. A request for a key that is held by *another* connection of the *same* ``Identity.id`` revokes
the old lease (its listener is closed at once) and the new connection takes over -- so a client that died
without a disconnect message can re-bind its port right away; a different identity is refused. Port 0 binds
a port chosen by the server and the reply carries it. ``cancel-tcpip-forward`` and the end of the owning
connection (disconnect, keepalive timeout, shutdown) release the lease and close the listener.

asyncssh does the binding (``SSHServerConnection.forward_local_port``: each inbound connection opens
``forwarded-tcpip`` to the owner; a failure closes only that inbound connection). The returned
:class:`LeaseListener` is what asyncssh records for the connection, so its ``close()`` is called on cancel
and on connection cleanup. Nothing here logs bind addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncssh

from alknet.core.policy.canon import BIND_ALL, Invalid, canonical_bind_host

__all__ = ["Lease", "LeaseKey", "LeaseListener", "LeaseTable", "lease_host"]

LeaseKey = tuple[str, int]


def lease_host(host: str) -> str | None:
    """The lease-table spelling of a bind host: ``*`` for all interfaces (``""``, ``*``, ``0.0.0.0``, ``::``),
    ``localhost``, or the canonical IP; ``None`` for anything else (refused)."""
    canon = canonical_bind_host(host)
    if isinstance(canon, Invalid):
        return None
    if canon == BIND_ALL:
        return "*"
    return str(canon)


@dataclass(eq=False, slots=True)
class Lease:
    """One bound remote-forward listener. ``owner`` is the owning connection (any object, compared by
    identity); ``listener`` is ``None`` while the bind is in progress."""

    key: LeaseKey
    owner: object
    identity_id: str
    listener: asyncssh.SSHListener | None = None
    released: bool = field(default=False)


class LeaseTable:
    """All leases of one server (shared by every listener and connection)."""

    def __init__(self) -> None:
        self._leases: dict[LeaseKey, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def __repr__(self) -> str:
        return f"LeaseTable({len(self._leases)} leases)"

    def get(self, key: LeaseKey) -> Lease | None:
        return self._leases.get(key)

    def owned_by(self, owner: object) -> list[Lease]:
        return [lease for lease in self._leases.values() if lease.owner is owner]

    def claim(self, key: LeaseKey, owner: object, identity_id: str) -> Lease | None:
        """Reserve ``key`` for ``owner`` before binding.

        Free -> a new pending lease. Held by another connection of the same identity -> that lease is revoked
        (its listener closed) and a new one returned. Held by a different identity, by the same connection,
        or still being bound -> ``None`` (refused).
        """
        if key[1] == 0:  # server-chosen port: keyed once bound (ports chosen by the OS never clash)
            return Lease(key, owner, identity_id)
        current = self._leases.get(key)
        if current is not None:
            if current.identity_id != identity_id or current.owner is owner or current.listener is None:
                return None
            self.revoke(current)
        lease = Lease(key, owner, identity_id)
        self._leases[key] = lease
        return lease

    def record(self, lease: Lease, listener: asyncssh.SSHListener) -> Lease | None:
        """Attach the bound listener. A port-0 lease enters the table under the chosen port; ``None`` if the
        lease was released meanwhile or that port is somehow held already (the listener is then closed)."""
        if lease.released:
            listener.close()
            return None
        key = lease.key
        if key[1] == 0:
            key = (key[0], listener.get_port())
            if key in self._leases:
                listener.close()
                lease.released = True
                return None
            lease.key = key
            self._leases[key] = lease
        lease.listener = listener
        return lease

    def release(self, lease: Lease) -> None:
        """Forget ``lease`` (only if it is still the current holder of its key) and close its listener."""
        if lease.released:
            return
        lease.released = True
        if self._leases.get(lease.key) is lease:
            del self._leases[lease.key]
        if lease.listener is not None:
            lease.listener.close()

    def revoke(self, lease: Lease) -> None:
        """Takeover: the old owner loses the lease and its listener closes at once."""
        self.release(lease)

    def release_owner(self, owner: object) -> None:
        """The owning connection ended: release everything it holds."""
        for lease in self.owned_by(owner):
            self.release(lease)


class LeaseListener(asyncssh.SSHListener):
    """The listener asyncssh records for one remote forward; closing it releases the lease."""

    def __init__(self, table: LeaseTable, lease: Lease, inner: asyncssh.SSHListener) -> None:
        super().__init__()
        self._table = table
        self.lease = lease
        self._inner = inner

    def get_port(self) -> int:
        return self._inner.get_port()

    def close(self) -> None:
        self._table.release(self.lease)
        self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()
