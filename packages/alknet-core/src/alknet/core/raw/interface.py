"""Raw framing: the call protocol without SSH (``call-protocol.md`` §2, §10.2; ``transport-and-ssh.md`` §15).

One stream is one channel. The handshake, in JSON whatever codec follows:

1. the client's first frame is ``auth.token {token, codec?}`` (``codec`` ``"json"``, the default, or
   ``"msgpack"``);
2. the server reads exactly that frame within ``auth_timeout`` (10 s) and reads nothing else until
   ``IdentityProvider.resolve_from_token(token, remote_ip=...)`` has verified it; then it evaluates the forwarding
   policy for ``alknet-control:<codec port>`` (0 JSON, 1 msgpack) with the transport kind and the key's options,
   exactly as for an SSH control channel;
3. success: ``auth.ok {id, scopes}`` (scopes sorted) and the negotiated codec from the next frame on; frames the
   client pipelined after ``auth.token`` are served once the token verified. Failure: ``auth.error {code,
   message}`` and close -- ``FORBIDDEN`` ``authentication failed`` for a bad, expired or unknown token (and
   ``forwarding not permitted`` for a policy deny); ``PROTOCOL_ERROR`` for another first frame, a bad payload,
   an unknown codec or one that disagrees with the ALPN; ``TIMEOUT`` when no frame arrives in time.

The resulting ``Identity`` is the one an SSH login with the same key gets. Tokens are never logged; the log
lines carry the key fingerprint (``auth attempt ... user="token"``, plus ``connection opened`` / ``closed`` as
for SSH), so fail2ban counts refused tokens like refused keys.

Server side: :class:`RawListener` (a ``raw+tcp://`` listener serving a :class:`~alknet.core.node.Node`) and
:func:`accept_handshake` (the transport-independent server handshake, for quic/iroh streams too). Client
side, in :mod:`alknet.core.raw.client`: ``open_raw_channel``, or ``send_auth_token`` + ``read_auth_reply`` to
pipeline frames.

This module never imports asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from alknet.core import logfmt
from alknet.core.auth.identity import Identity, IdentityProvider
from alknet.core.auth.keys import is_fingerprint
from alknet.core.call.envelope import EventEnvelope
from alknet.core.call.frame import (
    JSON_CODEC,
    BodyDecodeError,
    Codec,
    check_max_frame,
    codec_by_name,
    encode_frame,
)
from alknet.core.call.peer import CallPeer, ChannelLimits, ChannelStream
from alknet.core.config.static import ListenerSpec, parse_listen
from alknet.core.errors import ConfigError, IdentityBackendError
from alknet.core.policy.grammar import Request
from alknet.core.server.ratelimit import key_for
from alknet.core.transport.base import (
    AcceptorClosed,
    Release,
    TransportInfo,
    TransportKind,
    attach,
)
from alknet.core.transport.tcp import TcpAcceptor

if TYPE_CHECKING:
    from alknet.core.config.atomic import AtomicRef
    from alknet.core.config.dynamic import DynamicConfig
    from alknet.core.node import Node
    from alknet.core.server.ratelimit import ConnectionLimiter

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
]

Logger = logging.Logger | logging.LoggerAdapter[Any]

log = logging.getLogger("alknet.server")

AUTH_TOKEN: Final = "auth.token"
AUTH_OK: Final = "auth.ok"
AUTH_ERROR: Final = "auth.error"
#: The ``user`` field of the ``auth attempt`` lines of token logins (SSH logs the SSH user name there).
AUTH_USER: Final = "token"
#: The reserved destination whose policy a raw channel needs, and the port of each codec on it.
CONTROL_HOST: Final = "alknet-control"
CODEC_PORTS: Final = {"json": 0, "msgpack": 1}
DEFAULT_AUTH_TIMEOUT: Final = 10.0
#: Longest ``auth.token`` frame body the server reads before authentication (a token is 139 characters).
AUTH_FRAME_LIMIT: Final = 16 * 1024

FORBIDDEN: Final = "FORBIDDEN"
PROTOCOL_ERROR: Final = "PROTOCOL_ERROR"
TIMEOUT: Final = "TIMEOUT"
AUTH_FAILED: Final = "authentication failed"
NOT_PERMITTED: Final = "forwarding not permitted"

_HEADER = struct.Struct(">I")
#: After ``auth.error``: how long the server keeps the stream to let the reply reach the client before closing.
_LINGER: Final = 1.0
_LINGER_BYTES: Final = 256 * 1024
_CLOSE_WAIT: Final = 5.0


class ReaderLike(Protocol):
    async def readexactly(self, n: int) -> bytes: ...

    async def read(self, n: int = -1) -> bytes: ...


class WriterLike(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class AuthFailure(Exception):
    """The server refused the handshake: the ``auth.error`` it sends (``code``, ``message``)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class RawAuthError(Exception):
    """Client side: the server answered ``auth.error`` (``code``, ``message``), or no valid answer came."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


# ------------------------------------------------------------------------------------------------ frames


def _auth_frame(type_: str, payload: dict[str, Any]) -> bytes:
    return encode_frame(EventEnvelope(type_, "", payload), JSON_CODEC)


def auth_token_frame(token: str, codec: str | None = None) -> bytes:
    """The ``auth.token`` frame (JSON); ``codec=None`` leaves the field out (JSON)."""
    payload: dict[str, Any] = {"token": token}
    if codec is not None:
        payload["codec"] = codec
    return _auth_frame(AUTH_TOKEN, payload)


def _ok_frame(identity: Identity) -> bytes:
    return _auth_frame(AUTH_OK, {"id": identity.id, "scopes": sorted(identity.scopes)})


def _error_frame(code: str, message: str) -> bytes:
    return _auth_frame(AUTH_ERROR, {"code": code, "message": message})


async def _read_frame(reader: ReaderLike, limit: int) -> EventEnvelope | None:
    """One JSON frame; ``None`` on EOF (clean or inside the frame). ``AuthFailure`` for a bad frame."""
    try:
        header = await reader.readexactly(4)
        (n,) = _HEADER.unpack(header)
        if n == 0 or n > limit:
            raise AuthFailure(PROTOCOL_ERROR, "bad auth frame length")
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        return None
    try:
        return JSON_CODEC.decode(body)
    except BodyDecodeError:
        raise AuthFailure(PROTOCOL_ERROR, "auth frame is not a JSON envelope") from None


def _parse_auth_token(env: EventEnvelope, alpn_codec: str | None) -> tuple[str, str]:
    """``(token, codec name)`` of a first frame, or ``AuthFailure PROTOCOL_ERROR``."""
    if env.type != AUTH_TOKEN:
        raise AuthFailure(PROTOCOL_ERROR, "expected auth.token")
    payload = env.payload
    if not isinstance(payload, dict) or not isinstance(payload.get("token"), str):
        raise AuthFailure(PROTOCOL_ERROR, "auth.token needs a token string")
    codec = payload.get("codec", alpn_codec or "json")
    if codec not in CODEC_PORTS:
        raise AuthFailure(PROTOCOL_ERROR, "unknown codec")
    if alpn_codec is not None and codec != alpn_codec:
        raise AuthFailure(PROTOCOL_ERROR, "codec disagrees with the ALPN")
    return payload["token"], codec


# ------------------------------------------------------------------------------------------ server side


def _ip(remote_addr: tuple[str, int] | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if remote_addr is None:
        return None
    normalised = logfmt.normalize_ip(remote_addr)
    return None if normalised is None else ipaddress.ip_address(normalised)


async def accept_handshake(
    reader: ReaderLike,
    writer: WriterLike,
    *,
    provider: IdentityProvider,
    dynamic: AtomicRef[DynamicConfig],
    transport: TransportKind | str,
    remote_addr: tuple[str, int] | None,
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
    alpn_codec: str | None = None,
    peer_id: str | None = None,
    logger: Logger = log,
) -> tuple[Identity, Codec] | None:
    """The server side of the raw-framing handshake on one stream.

    Reads the first frame (at most :data:`AUTH_FRAME_LIMIT` bytes, within ``auth_timeout``), verifies the token
    through ``provider`` with the peer's IP, evaluates the forwarding policy of ``dynamic`` for
    ``alknet-control:<codec port>`` with ``transport``, and writes ``auth.ok``. Returns the identity and the
    negotiated codec; the stream then carries that codec, starting with whatever the client pipelined. On
    refusal it writes ``auth.error`` and returns ``None`` (the caller closes the stream); ``None`` also when the
    stream ends before a whole frame. ``alpn_codec`` is the codec a quic/iroh ALPN already chose.
    """
    remote_ip = _ip(remote_addr)
    token_ok = False
    fingerprint: str | None = None
    try:
        try:
            env = await asyncio.wait_for(_read_frame(reader, AUTH_FRAME_LIMIT), auth_timeout)
        except TimeoutError:
            raise AuthFailure(TIMEOUT, "no auth.token in time") from None
        if env is None:
            return None
        token, codec_name = _parse_auth_token(env, alpn_codec)
        try:
            async with asyncio.timeout(auth_timeout):
                identity = await provider.resolve_from_token(token, remote_ip=remote_ip)
                options = None if identity is None else await provider.credential_options(identity.id)
        except (IdentityBackendError, TimeoutError) as exc:
            logfmt.log_event(
                logger, logging.WARNING, "identity backend failed; token refused", error=type(exc).__name__
            )
            identity = options = None
        del token
        if identity is None or options is None:
            raise AuthFailure(FORBIDDEN, AUTH_FAILED)
        token_ok = True
        fingerprint = identity.id if is_fingerprint(identity.id) else None
        decision = dynamic.load().forwarding.evaluate(
            Request(CONTROL_HOST, CODEC_PORTS[codec_name]), identity, str(transport), options=options
        )
        if not decision.allowed:
            raise AuthFailure(FORBIDDEN, NOT_PERMITTED)
    except AuthFailure as failure:
        if failure.code == FORBIDDEN:
            result = "accept" if token_ok else "reject"
            logfmt.auth_attempt(remote_addr, AUTH_USER, fingerprint, result, peer=peer_id).emit(logger)
        writer.write(_error_frame(failure.code, failure.message))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), _LINGER)
        return None
    logfmt.auth_attempt(remote_addr, AUTH_USER, fingerprint, "accept", peer=peer_id).emit(logger)
    writer.write(_ok_frame(identity))
    return identity, codec_by_name(codec_name)


@dataclasses.dataclass(eq=False, slots=True)
class _Connection:
    info: TransportInfo
    task: asyncio.Task[None] | None = None
    peer: CallPeer | None = None


class RawListener:
    """A ``raw+tcp://`` listener: each accepted TCP connection is one call-protocol channel of ``node``.

    ``listen``: a ``ListenerSpec`` (``interface`` may be ``raw`` or ``ssh``; only its host, port and
    ``insecure_plaintext`` are used), a ``"HOST:PORT"`` / ``"raw+tcp://HOST:PORT"`` string, or a
    ``(host, port)`` pair; port 0 takes a free port. ``provider`` verifies tokens; ``dynamic`` is the server's
    ``AtomicRef[DynamicConfig]`` (forwarding policy and token settings, read per connection, so reloads apply to
    the next connection); ``limiter`` is the server's shared per-IP ``ConnectionLimiter`` (checked at accept,
    before any byte is read; ``None`` = no per-IP limit). ``auth_timeout`` defaults to the limits'
    ``auth_timeout`` (10 s); ``max_frame`` to the limits' ``max_frame``; ``limits`` to ``node.limits``.

    :meth:`start` raises ``ConfigError`` for a non-loopback host without ``insecure_plaintext`` or when token
    auth is disabled, and ``BindError`` when the address cannot be bound; a non-loopback bind logs a WARNING.
    :meth:`close` stops listening and closes every channel (pending calls fail with ``UNAVAILABLE``).
    """

    kind: Final = TransportKind.TCP

    def __init__(
        self,
        listen: ListenerSpec | str | tuple[str, int],
        node: Node,
        provider: IdentityProvider,
        dynamic: AtomicRef[DynamicConfig],
        limiter: ConnectionLimiter | None = None,
        *,
        auth_timeout: float | None = None,
        max_frame: int | None = None,
        limits: ChannelLimits | None = None,
        insecure_plaintext: bool = False,
        logger: Logger | None = None,
    ) -> None:
        spec = _spec_of(listen, insecure_plaintext)
        base = limits if limits is not None else node.limits
        if max_frame is not None and max_frame != base.max_frame:
            base = dataclasses.replace(base, max_frame=check_max_frame(max_frame))
        if auth_timeout is not None:
            base = dataclasses.replace(base, auth_timeout=auth_timeout)
        self.spec = spec
        self.node = node
        self.provider = provider
        self.dynamic = dynamic
        self.limiter = limiter
        self.limits = base
        self.logger: Logger = logger if logger is not None else log
        self._acceptor = TcpAcceptor(spec.host, spec.port, admit=self._admit)
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"RawListener({self.listen_addrs or self.spec.url}, channels={len(self.channels)})"

    @property
    def auth_timeout(self) -> float:
        return self.limits.auth_timeout

    @property
    def listen_addrs(self) -> list[str]:
        """The bound addresses with their real ports, e.g. ``["raw+tcp://127.0.0.1:40123"]``."""
        return [f"raw+tcp://{addr}" for addr in self._acceptor.listen_addrs]

    @property
    def ports(self) -> list[int]:
        return self._acceptor.ports

    @property
    def channels(self) -> list[CallPeer]:
        """The authenticated channels open now (identity, transport, remote address, connected at)."""
        return [c.peer for c in self._connections if c.peer is not None and not c.peer.closed]

    async def start(self) -> None:
        """Check the settings and bind; then accept until :meth:`close`."""
        if self._started:
            raise RuntimeError("RawListener.start() may be called once")
        if self._closed:
            raise RuntimeError("RawListener is closed")
        if not self.spec.is_loopback and not self.spec.insecure_plaintext:
            raise ConfigError(
                f"listener {self.spec.url}: raw listener on non-loopback {self.spec.host} needs insecure_plaintext"
            )
        if not self.dynamic.load().auth.token_enabled:
            raise ConfigError(
                f"listener {self.spec.url}: raw framing needs token auth ([auth.token] enabled)"
            )
        self._started = True
        await self._acceptor.start()
        if not self.spec.is_loopback:
            logfmt.log_event(
                self.logger,
                logging.WARNING,
                "raw listener carries plaintext on a non-loopback address",
                listener=self.spec.url,
            )
        self._accept_task = asyncio.get_running_loop().create_task(
            self._accept_loop(), name="alknet-raw-accept"
        )

    async def __aenter__(self) -> RawListener:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting and close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._acceptor.aclose()
        task = self._accept_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connections = list(self._connections)
        peers = [c.peer for c in connections if c.peer is not None]
        if peers:
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        tasks = [c.task for c in connections if c.task is not None and not c.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_WAIT)

    # -------------------------------------------------------------------------------------- internals

    def _admit(self, info: TransportInfo) -> Release | None:
        if self.limiter is None:
            return lambda: None
        limiter = self.limiter
        try:
            key = key_for(info.remote_addr)
        except ValueError:
            key = None
        if not limiter.try_acquire(key):
            logfmt.connection_rejected(info.remote_addr, "too_many_connections").emit(self.logger)
            return None
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                limiter.release(key)

        return release

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                transport, info = await self._acceptor.accept()
            except AcceptorClosed:
                return
            if self._closed:
                transport.abort()
                return
            conn = _Connection(info)
            conn.task = loop.create_task(self._serve(conn, transport), name="alknet-raw-connection")
            self._connections.add(conn)
            conn.task.add_done_callback(functools.partial(self._forget, conn))

    def _forget(self, conn: _Connection, _task: asyncio.Task[None]) -> None:
        self._connections.discard(conn)

    async def _serve(self, conn: _Connection, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        info = conn.info
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        attach(transport, protocol)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        opened = time.monotonic()
        logfmt.connection_opened(info.remote_addr, str(info.kind)).emit(self.logger)
        try:
            result = await accept_handshake(
                reader,
                writer,
                provider=self.provider,
                dynamic=self.dynamic,
                transport=info.kind,
                remote_addr=info.remote_addr,
                auth_timeout=self.limits.auth_timeout,
                logger=self.logger,
            )
            if result is None:
                await _linger_close(reader, writer)
                return
            identity, codec = result
            stream = ChannelStream(
                reader,
                writer,
                codec,
                identity,
                str(info.kind),
                logfmt.normalize_remote_addr(info.remote_addr),
            )
            peer = self.node.peer(stream, limits=self.limits)
            conn.peer = peer
            if self._closed:
                await peer.close()
                return
            await peer.serve_forever()
        except asyncio.CancelledError:
            transport.abort()
            raise
        except OSError as exc:  # reset by the peer during the handshake
            logfmt.log_event(self.logger, logging.DEBUG, "raw connection lost", error=type(exc).__name__)
            transport.abort()
        except Exception:
            self.logger.exception("raw connection failed")
            transport.abort()
        finally:
            if not transport.is_closing():
                transport.close()
            logfmt.connection_closed(info.remote_addr, time.monotonic() - opened).emit(self.logger)


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after a refusal without losing the ``auth.error`` in flight: send FIN, then discard what the
    client still sends (bounded in bytes and time) so that closing does not reset the connection."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER):
            received = 0
            while received < _LINGER_BYTES:
                data = await reader.read(65536)
                if not data:
                    break
                received += len(data)
    except (TimeoutError, OSError, RuntimeError):
        pass
    finally:
        writer.close()


def _spec_of(listen: ListenerSpec | str | tuple[str, int], insecure_plaintext: bool) -> ListenerSpec:
    if isinstance(listen, ListenerSpec):
        spec = listen
    elif isinstance(listen, str):
        try:
            text = listen if "://" in listen else f"raw+tcp://{listen}"
            spec = parse_listen(text)
        except ValueError as exc:
            raise ConfigError(f"raw listener {listen!r}: {exc}") from None
    else:
        host, port = listen
        spec = ListenerSpec(kind="tcp", host=host, port=port, interface="raw")
    if spec.kind != "tcp":
        raise ConfigError(f"listener {spec.url}: raw framing on a listener of its own is tcp only")
    if spec.interface != "raw" or (insecure_plaintext and not spec.insecure_plaintext):
        spec = dataclasses.replace(
            spec, interface="raw", insecure_plaintext=spec.insecure_plaintext or insecure_plaintext
        )
    return spec
