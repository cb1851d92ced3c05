"""No empty ``SSH_MSG_IGNORE`` in front of every packet (what OpenSSH does).

asyncssh 2.24 sends an empty ``SSH_MSG_IGNORE`` packet ahead of every packet it sends after key exchange
(``SSHConnection.send_packet``). That is a countermeasure for CBC-mode ciphers, whose next IV an observer
could otherwise predict. alknet negotiates only AEAD ciphers (``aes128-gcm``, ``aes256-gcm``,
``chacha20-poly1305``, see :data:`alknet.core.ssh.server.CIPHERS`), where every packet has its own nonce and
the extra packet protects nothing; RFC 4253 §11.2 lets an implementation send ignore packets or not, and
OpenSSH does not send them per packet. Each one costs a full packet on both sides (padding, encryption, MAC,
framing, then decryption and dispatch in Python): about 17 % of a small call's round trip over the control
channel (docs/performance.md).

:func:`skip_automatic_ignores` replaces ``send_packet`` on one connection object with a wrapper that drops
exactly those automatic packets: an empty ``SSH_MSG_IGNORE`` sent from inside ``send_packet`` for a
non-key-exchange message. Every other packet, including an ignore packet sent on purpose, goes through
unchanged. This relies on asyncssh's private ``send_packet``; ``alknet-core`` pins ``asyncssh<2.25`` and
``tests/integration/test_ssh_packets.py`` is the canary that fails when an upgrade changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import asyncssh

__all__ = ["skip_automatic_ignores"]

MSG_IGNORE: Final = 2
MSG_KEX_LAST: Final = 49
_EMPTY_STRING: Final = b"\x00\x00\x00\x00"  # asyncssh's String(b"")
_MARK: Final = "_alknet_no_auto_ignore"


def skip_automatic_ignores(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Stop ``conn`` from sending an empty ignore packet before each packet (idempotent)."""
    if getattr(conn, _MARK, False):
        return
    original: Callable[..., None] = conn.send_packet
    inside = False

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        nonlocal inside
        if pkttype == MSG_IGNORE and inside and args == (_EMPTY_STRING,):
            return  # the automatic one, sent by the send_packet below for the packet it is sending
        if pkttype <= MSG_KEX_LAST or inside:
            original(pkttype, *args, handler=handler)
            return
        inside = True
        try:
            original(pkttype, *args, handler=handler)
        finally:
            inside = False

    conn.send_packet = send_packet  # type: ignore[method-assign]
    setattr(conn, _MARK, True)
