"""Client side of raw framing (``transport-and-ssh.md`` §15): send ``auth.token``, read the answer, and
:func:`open_raw_channel` for a ``raw+tcp`` listener. The server side is :mod:`alknet.core.raw.interface`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from alknet.core.auth.identity import Identity
from alknet.core.call.channel import ChannelStream
from alknet.core.call.frame import DEFAULT_MAX_FRAME, codec_by_name
from alknet.core.raw.interface import (
    AUTH_ERROR,
    AUTH_OK,
    DEFAULT_AUTH_TIMEOUT,
    PROTOCOL_ERROR,
    TIMEOUT,
    AuthFailure,
    RawAuthError,
    ReaderLike,
    WriterLike,
    _read_frame,
    auth_token_frame,
)
from alknet.core.transport.base import format_hostport

__all__ = ["open_raw_channel", "read_auth_reply", "send_auth_token"]


def send_auth_token(writer: WriterLike, token: str, codec: str = "json") -> None:
    """Write the ``auth.token`` frame (without waiting); frames in ``codec`` may follow at once."""
    codec_by_name(codec)
    writer.write(auth_token_frame(token, None if codec == "json" else codec))


async def read_auth_reply(
    reader: ReaderLike, *, timeout: float = DEFAULT_AUTH_TIMEOUT, max_frame: int = DEFAULT_MAX_FRAME
) -> Identity:
    """Read the server's answer to ``auth.token``: the granted identity from ``auth.ok``.

    Raises :class:`RawAuthError` with the server's code and message for ``auth.error``, with
    ``UNAVAILABLE`` when the stream ends first, ``TIMEOUT`` after ``timeout`` and ``PROTOCOL_ERROR`` for any
    other answer.
    """
    try:
        env = await asyncio.wait_for(_read_frame(reader, max_frame), timeout)
    except TimeoutError:
        raise RawAuthError(TIMEOUT, "no answer to auth.token") from None
    except AuthFailure as exc:
        raise RawAuthError(PROTOCOL_ERROR, exc.message) from None
    if env is None:
        raise RawAuthError("UNAVAILABLE", "connection closed during the handshake")
    payload = env.payload
    if env.type == AUTH_ERROR and isinstance(payload, dict):
        code, message = payload.get("code"), payload.get("message")
        raise RawAuthError(
            code if isinstance(code, str) else PROTOCOL_ERROR, message if isinstance(message, str) else ""
        )
    if env.type == AUTH_OK and isinstance(payload, dict):
        ident, scopes = payload.get("id"), payload.get("scopes")
        if isinstance(ident, str) and ident and isinstance(scopes, list):
            try:
                return Identity(ident, tuple(_strs(scopes)))
            except (TypeError, ValueError):
                pass
    raise RawAuthError(PROTOCOL_ERROR, f"unexpected answer {env.type[:64]!r} to auth.token")


def _strs(items: Sequence[Any]) -> list[str]:
    if not all(isinstance(s, str) for s in items):
        raise TypeError("scopes must be strings")
    return list(items)


async def open_raw_channel(
    host: str,
    port: int,
    token: str,
    *,
    codec: str = "json",
    timeout: float = DEFAULT_AUTH_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> tuple[ChannelStream, Identity]:
    """Connect to a ``raw+tcp`` listener, authenticate with ``token`` and choose ``codec``.

    Returns a stream for ``CallPeer`` (``codec`` set, ``transport="tcp"``; its ``identity`` is left unset, as
    calls the server makes over the channel come from the server) and the identity the server granted.
    Raises :class:`RawAuthError` when refused (the connection is closed) and ``OSError`` / ``TimeoutError``
    when the connection cannot be made within ``timeout``.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        send_auth_token(writer, token, codec)
        await writer.drain()
        identity = await read_auth_reply(reader, timeout=timeout, max_frame=max_frame)
    except BaseException:
        writer.close()
        raise
    stream = ChannelStream(reader, writer, codec, None, "tcp", format_hostport(host, port))
    return stream, identity
