"""Raw framing: the call protocol over a bare stream with an ``auth.token`` handshake (``transport-and-ssh.md``
§15). See :mod:`alknet.core.raw.interface`."""

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
    open_raw_channel,
    read_auth_reply,
    send_auth_token,
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
