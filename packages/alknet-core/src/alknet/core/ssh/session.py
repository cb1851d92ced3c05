"""The long-running client runtime of ``alknet connect`` (transport-and-ssh.md §13-§14, cli.md §4).

:class:`ClientSession` combines one :class:`~alknet.core.ssh.client.SshClient` with the SOCKS5 server, the
``-L`` listeners, the ``-R`` forwards and the reconnect supervisor:

1. :meth:`ClientSession.start` binds SOCKS5 (default ``127.0.0.1:1080``) and every ``-L`` listener, in that
   order, before any connection attempt. A bind failure raises ``ListenError`` (``cannot listen on
   127.0.0.1:5432: address already in use``; exit 1 at the CLI) after closing what was already bound.
2. :meth:`ClientSession.run` connects under the :class:`~alknet.core.ssh.reconnect.ReconnectSupervisor` and
   never returns: each (re)connect is logged ``msg="connected" server=<describe()>``, each loss
   ``msg="disconnected" reason="..."`` and each wait ``msg="reconnecting" attempt=<n> delay=<s>``. After every
   connect all ``-R`` forwards are requested again; a refused one logs ``level=WARNING msg="remote forward
   refused" forward=<n>`` (its 1-based position) and is retried at the next reconnect; a port-0 forward logs
   ``msg="remote forward bound" port=<n>``. Keepalive (``keepalive_interval`` x ``keepalive_count_max``)
   declares a silent server dead. A host-key refusal (``HostKeyError``) ends :meth:`run` by raising it: the
   CLI maps it to exit 1.
3. The listeners stay bound across outages. While no connection is up, a SOCKS5 request gets reply ``0x01``
   and a ``-L`` connection is closed, at once. Channel-open failures become SOCKS5 replies through
   :func:`alknet.core.ssh.socks5.reply_for_failure`.
4. :meth:`ClientSession.aclose` refuses new channels, lets open ones drain (up to ``drain`` seconds), then
   closes the listeners and the SSH connection.

Forward targets, SOCKS5 destinations and remote bind addresses are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncssh

from alknet.core import logfmt
from alknet.core.errors import ConfigError
from alknet.core.ssh.client import ClientConnection, SshClient
from alknet.core.ssh.forwards import (
    DEFAULT_BIND_HOST,
    ChannelStreams,
    LocalForward,
    LocalForwardListener,
    NotConnected,
    RemoteForward,
    StreamListener,
)
from alknet.core.ssh.known_hosts import HostKeyError
from alknet.core.ssh.reconnect import ReconnectSupervisor
from alknet.core.ssh.socks5 import DEFAULT_SOCKS5_PORT, Socks5Server
from alknet.core.transport.tls import TlsVerificationError

__all__ = [
    "DEFAULT_DRAIN",
    "DEFAULT_SOCKS5",
    "ClientSession",
    "SessionOptions",
    "parse_listen_address",
    "run_session",
]

log = logging.getLogger("alknet.client")

DEFAULT_SOCKS5: tuple[str, int] = (DEFAULT_BIND_HOST, DEFAULT_SOCKS5_PORT)
#: How long :meth:`ClientSession.aclose` lets open channels finish (transport-and-ssh.md §12).
DEFAULT_DRAIN = 2.0


def parse_listen_address(text: str, *, what: str = "--socks5") -> tuple[str, int]:
    """``ADDR:PORT``, ``[v6]:PORT``, ``*:PORT`` or a bare ``PORT`` (on 127.0.0.1) -> ``(host, port)``.

    Port 0 means an ephemeral port. Raises ``ConfigError`` quoting the value.
    """
    shown = text[:100]

    def fail(why: str) -> ConfigError:
        return ConfigError(f"invalid {what} address {shown!r}: {why}")

    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise fail("expected [IPv6]:PORT")
        host, port_text = value[1:end], value[end + 2 :]
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise fail("the address in brackets is not an IPv6 address") from None
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            raise fail("put an IPv6 address in brackets: [addr]:port")
    else:
        host, port_text = DEFAULT_BIND_HOST, value
    if not host:
        raise fail("the address is empty")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c in "/\\@%," for c in host):
        raise fail("the address contains characters not allowed in a host")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise fail("the port must be a number from 0 to 65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What ``alknet connect`` serves besides the connection: ``socks5`` (``None`` = ``--no-socks5``), the
    ``-L`` forwards and the ``-R`` forwards (parsed with ``alknet.core.ssh.forwards``)."""

    socks5: tuple[str, int] | None = DEFAULT_SOCKS5
    forwards: tuple[LocalForward, ...] = ()
    remote_forwards: tuple[RemoteForward, ...] = ()


def _wire_bind_host(host: str) -> str:
    """The ``tcpip-forward`` bind address: ``*`` (all interfaces) is sent as ``""`` like OpenSSH does."""
    return "" if host == "*" else host


class ClientSession:
    """One ``alknet connect`` runtime. Use as ``async with ClientSession(client, opts) as s: await s.run()``.

    ``sleep``, ``uniform`` and ``clock`` go to the reconnect supervisor (tests shorten the backoff with them).
    """

    def __init__(
        self,
        client: SshClient,
        options: SessionOptions | None = None,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        uniform: Callable[[float, float], float] = random.uniform,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.options = options if options is not None else SessionOptions()
        self.socks5: Socks5Server | None = None
        self.forward_listeners: list[LocalForwardListener] = []
        self._conn: ClientConnection | None = None
        self._last_conn: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._started = False
        self._run_task: asyncio.Task[object] | None = None
        self._channels: set[asyncio.Task[None]] = set()
        #: 1-based ``-R`` position -> bound port, for the forwards active on the current connection.
        self.remote_ports: dict[int, int] = {}
        self.supervisor: ReconnectSupervisor[ClientConnection] = ReconnectSupervisor(
            self._connect,
            self._serve,
            server=client.describe(),
            fatal=(HostKeyError,),
            logged_as_error=(asyncssh.PermissionDenied, TlsVerificationError),
            clock=clock,
            sleep=sleep,
            uniform=uniform,
        )

    # -------------------------------------------------------------------------------------- state

    @property
    def connection(self) -> ClientConnection | None:
        """The SSH connection while one is up."""
        conn = self._conn
        return conn if conn is not None and not conn.is_closed else None

    @property
    def connected(self) -> bool:
        return self.connection is not None

    @property
    def listeners(self) -> list[StreamListener]:
        """SOCKS5 (if on) then the ``-L`` listeners, in the order they were bound."""
        out: list[StreamListener] = [self.socks5] if self.socks5 is not None else []
        return out + list(self.forward_listeners)

    async def wait_connected(self) -> ClientConnection:
        """Wait until a connection is up (and its ``-R`` forwards have been requested); return it."""
        while True:
            await self._connected.wait()
            conn = self.connection
            if conn is not None:
                return conn
            await asyncio.sleep(0)

    # -------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind SOCKS5 and the ``-L`` listeners; ``ListenError`` (nothing left bound) if one fails."""
        if self._started:
            return
        self._started = True
        try:
            if self.options.socks5 is not None:
                host, port = self.options.socks5
                self.socks5 = Socks5Server(self.open_channel, host, port)
                await self.socks5.start()
            for fwd in self.options.forwards:
                listener = LocalForwardListener(fwd, self.open_channel, self.open_unix_channel)
                self.forward_listeners.append(listener)
                await listener.start()
        except BaseException:
            await self._close_listeners()
            raise

    async def run(self) -> NoReturn:
        """Connect and stay connected forever (binds first if :meth:`start` was not called).

        Returns only by raising: ``HostKeyError`` (fatal, exit 1) or ``CancelledError``.
        """
        await self.start()
        self._run_task = asyncio.current_task()
        try:
            await self.supervisor.run()
        finally:
            self._run_task = None
            self._drop_connection()

    async def aclose(self, drain: float = DEFAULT_DRAIN) -> None:
        """Refuse new channels, let open ones finish for up to ``drain`` seconds, then close everything.

        A :meth:`run` still in progress (in another task) is cancelled first."""
        self._closing = True
        if self._channels and drain > 0:
            await asyncio.wait(set(self._channels), timeout=drain)
        run_task = self._run_task
        if run_task is not None and run_task is not asyncio.current_task() and not run_task.done():
            run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run_task
        await self._close_listeners()
        self._drop_connection()
        last, self._last_conn = self._last_conn, None
        if last is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(drain, 1.0)):
                    await last.aclose()
        for task in list(self._channels):
            task.cancel()
        await self.client.aclose()

    async def __aenter__(self) -> ClientSession:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _close_listeners(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await listener.aclose()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._connected.clear()
        self.remote_ports.clear()
        if conn is not None:
            conn.close()

    # -------------------------------------------------------------------------------------- channels

    def _current(self) -> ClientConnection:
        conn = self.connection
        if conn is None or self._closing:
            raise NotConnected("not connected to the server")
        return conn

    async def open_channel(self, host: str, port: int) -> ChannelStreams:
        """A channel to ``host:port`` through the current connection; ``NotConnected`` at once while there
        is none; asyncssh's ``ChannelOpenError`` when the server refuses."""
        reader, writer = await self._current().open_channel(host, port)
        self._track(writer)
        return reader, writer

    async def open_unix_channel(self, path: str) -> ChannelStreams:
        """A channel to the server-side unix socket ``path`` (``-L LPORT:unix:/path``)."""
        reader, writer = await self._current().open_unix_channel(path)
        self._track(writer)
        return reader, writer

    def _track(self, writer: object) -> None:
        channel = getattr(writer, "channel", None)
        wait_closed = getattr(channel, "wait_closed", None)
        if wait_closed is None:
            return
        task: asyncio.Task[None] = asyncio.ensure_future(wait_closed())
        self._channels.add(task)
        task.add_done_callback(self._channels.discard)

    # -------------------------------------------------------------------------------------- supervisor hooks

    async def _connect(self) -> ClientConnection:
        if self._closing:
            raise NotConnected("the session is closing")
        return await self.client.connect()

    async def _serve(self, conn: ClientConnection) -> str:
        self._conn = conn
        self._last_conn = conn
        forwards = asyncio.ensure_future(self._request_remote_forwards(conn))
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            await asyncio.wait({forwards, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not closed.done():
                self._connected.set()
            return await closed
        finally:
            for task in (forwards, closed):
                task.cancel()
            await asyncio.gather(forwards, closed, return_exceptions=True)
            if self._conn is conn:
                self._drop_connection()
            conn.close()

    async def _request_remote_forwards(self, conn: ClientConnection) -> None:
        for number, fwd in enumerate(self.options.remote_forwards, 1):
            if conn.is_closed:
                return
            try:
                listener = await conn.ssh.forward_remote_port(
                    _wire_bind_host(fwd.bind_host), fwd.bind_port, fwd.target_host, fwd.target_port
                )
            except asyncssh.ChannelListenError:
                logfmt.log_event(log, logging.WARNING, "remote forward refused", forward=number)
                continue
            except (OSError, asyncssh.Error):
                return  # the connection went away; the supervisor sees it close
            port = int(listener.get_port())
            self.remote_ports[number] = port
            if fwd.bind_port == 0:
                logfmt.log_event(log, logging.INFO, "remote forward bound", port=port)


async def run_session(
    client: SshClient,
    options: SessionOptions | None = None,
    *,
    stop: asyncio.Event | None = None,
    drain: float = DEFAULT_DRAIN,
) -> None:
    """``alknet connect``: bind, connect forever; when ``stop`` is set, drain (up to ``drain`` s) and return.

    Raises ``ListenError`` (a listener could not bind: exit 1) or ``HostKeyError`` (exit 1); cancelling it
    closes everything at once (the CLI's second signal).
    """
    session = ClientSession(client, options)
    run: asyncio.Future[NoReturn] | None = None
    try:
        await session.start()
        run = asyncio.ensure_future(session.run())
        waiters: set[asyncio.Future[Any]] = {run}
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.add(stopper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
        if run.done():
            run.result()  # HostKeyError (run() never returns normally)
        await session.aclose(drain)
    finally:
        if run is not None and not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
        await session.aclose(0)
