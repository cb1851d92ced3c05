"""No empty ``SSH_MSG_IGNORE`` in front of every packet (what OpenSSH does).

asyncssh 2.24 sends an empty ``SSH_MSG_IGNORE`` packet ahead of every packet it sends after key exchange
(``SSHConnection.send_packet``). That is a countermeasure for CBC-mode ciphers, whose next IV an observer
could otherwise predict. alknet negotiates only AEAD ciphers (``aes128-gcm``, ``aes256-gcm``,
``chacha20-poly1305``, see :data:`alknet.core.ssh.server.CIPHERS`), where every packet has its own nonce and
the extra packet protects nothing; RFC 4253 §11.2 lets an implementation send ignore packets or not, and
OpenSSH does not send them per packet. Each one costs a full packet on both sides (padding, encryption, MAC,
framing, then decryption and dispatch in Python): about 17 % of a small call's round trip over the control
channel (docs/performance.md).

:func:`skip_automatic_ignores` moves one connection object to a subclass of its asyncssh class whose
``send_packet`` drops exactly those automatic packets: an empty ``SSH_MSG_IGNORE`` sent from inside
``send_packet`` for a non-key-exchange message. Every other packet, including an ignore packet sent on purpose,
goes through unchanged. Changing the class adds nothing to the connection's memory (an attribute or a bound
wrapper per connection would). This relies on asyncssh's private ``send_packet``; ``alknet-core`` pins
``asyncssh<2.25`` and ``tests/integration/test_ssh_packets.py`` is the canary that fails when an upgrade changes
it.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import asyncssh
from asyncssh.connection import SSHConnection

__all__ = ["skip_automatic_ignores"]

MSG_IGNORE: Final = 2
MSG_KEX_LAST: Final = 49
_EMPTY_STRING: Final = b"\x00\x00\x00\x00"  # asyncssh's String(b"")


class _Sending(threading.local):
    """The connection whose ``send_packet`` is running on this thread (sends are synchronous)."""

    conn: object = None


_SENDING = _Sending()


class _NoAutomaticIgnore:
    """Mixed in front of asyncssh's connection class; see the module docstring."""

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        state = _SENDING
        outer = state.conn
        if outer is self:
            if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
                return  # the automatic one, for the packet this connection is sending right now
        elif pkttype > MSG_KEX_LAST:
            state.conn = self
            try:
                SSHConnection.send_packet(self, pkttype, *args, handler=handler)  # type: ignore[arg-type]
            finally:
                state.conn = outer
            return
        SSHConnection.send_packet(self, pkttype, *args, handler=handler)  # type: ignore[arg-type]


_SUBCLASSES: dict[type, type] = {}


def skip_automatic_ignores(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Stop ``conn`` from sending an empty ignore packet before each packet (idempotent)."""
    cls = type(conn)
    if issubclass(cls, _NoAutomaticIgnore):
        return
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = _SUBCLASSES[cls] = type(cls.__name__, (_NoAutomaticIgnore, cls), {"__module__": __name__})
    conn.__class__ = sub
