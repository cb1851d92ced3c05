"""Raw framing: the call protocol over a bare stream with an ``auth.token`` handshake (``transport-and-ssh.md``
§15). The server side is :mod:`alknet.core.raw.interface`, the client side :mod:`alknet.core.raw.client`."""

from alknet.core.raw.client import open_raw_channel, read_auth_reply, send_auth_token
from alknet.core.raw.interface import (
    AUTH_ERROR,
    AUTH_FRAME_LIMIT,
    AUTH_OK,
    AUTH_TOKEN,
    AUTH_USER,
    CODEC_PORTS,
    CONTROL_HOST,
    DEFAULT_AUTH_TIMEOUT,
    AuthFailure,
    RawAuthError,
    RawListener,
    accept_handshake,
    auth_token_frame,
)

__all__ = [
    "AUTH_ERROR",
    "AUTH_FRAME_LIMIT",
    "AUTH_OK",
    "AUTH_TOKEN",
    "AUTH_USER",
    "CODEC_PORTS",
    "CONTROL_HOST",
    "DEFAULT_AUTH_TIMEOUT",
    "AuthFailure",
    "RawAuthError",
    "RawListener",
    "accept_handshake",
    "auth_token_frame",
    "open_raw_channel",
    "read_auth_reply",
    "send_auth_token",
]
