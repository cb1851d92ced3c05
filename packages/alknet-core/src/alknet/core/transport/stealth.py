"""Stealth mode for tls listeners (transport-and-ssh.md §4): to scanners the port is an nginx answering 404.

After the TLS handshake nothing is sent. Client bytes are looked at (not consumed) until 8 are available or
they stop matching ``SSH-2.0-``: a match attaches SSH with every byte replayed; a mismatch gets exactly
:data:`NOT_FOUND_RESPONSE` and a close; no decision within the peek timeout, or EOF first, closes silently.

:func:`decide` is the sans-IO core (bytes in, decision out); :class:`StealthGate` is the asyncio glue, used as
a gate of :class:`~alknet.core.transport.base.AcceptorServer` on a tls listener.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from .base import TransportInfo, held_protocol

__all__ = [
    "DEFAULT_STEALTH_TIMEOUT",
    "NOT_FOUND_RESPONSE",
    "SSH_PREFIX",
    "StealthDecision",
    "StealthGate",
    "decide",
]

log = logging.getLogger("alknet.transport")

SSH_PREFIX = b"SSH-2.0-"
NOT_FOUND_RESPONSE = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n"
DEFAULT_STEALTH_TIMEOUT = 10.0


class StealthDecision(enum.Enum):
    WAIT = "wait"  # need more bytes
    SSH = "ssh"  # attach SSH, replaying the bytes
    NOT_FOUND = "404"  # write NOT_FOUND_RESPONSE, then close
    CLOSE = "close"  # close without writing anything


def decide(data: bytes, *, eof: bool = False, timed_out: bool = False) -> StealthDecision:
    """The stealth decision for the bytes received so far (steps 2-5 of §4)."""
    n = min(len(data), len(SSH_PREFIX))
    if data[:n] != SSH_PREFIX[:n]:
        return StealthDecision.NOT_FOUND
    if n == len(SSH_PREFIX):
        return StealthDecision.SSH
    if eof or timed_out:
        return StealthDecision.CLOSE
    return StealthDecision.WAIT


class StealthGate:
    """``AcceptorServer`` gate: ``True`` once ``SSH-2.0-`` was seen (the bytes stay buffered for attach)."""

    def __init__(self, timeout: float = DEFAULT_STEALTH_TIMEOUT) -> None:
        self.timeout = timeout

    async def __call__(self, transport: asyncio.Transport, info: TransportInfo) -> bool:
        held = held_protocol(transport)
        if held is None:
            raise TypeError("stealth needs a transport in the held state")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            remaining = deadline - loop.time()
            decision = decide(held.buffered, eof=held.eof or held.lost, timed_out=remaining <= 0)
            if decision is StealthDecision.SSH:
                return True
            if decision is StealthDecision.NOT_FOUND:
                log.debug("stealth: non-SSH client from %s answered with 404", info.rate_key())
                if not transport.is_closing():
                    transport.write(NOT_FOUND_RESPONSE)
                    transport.close()
                return False
            if decision is StealthDecision.CLOSE:
                log.debug("stealth: no SSH prefix from %s, closing", info.rate_key())
                if not transport.is_closing():
                    transport.close()
                return False
            try:
                await asyncio.wait_for(held.wait_changed(), remaining)
            except TimeoutError:
                continue
