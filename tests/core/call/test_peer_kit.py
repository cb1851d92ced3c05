"""Shared kit of the CallPeer / Node / events / env tests: real asyncio streams over ``socket.socketpair``.

Other test modules import it (``import test_peer_kit as kit``); its own tests check the kit itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    JSON_CODEC,
    MSGPACK_CODEC,
    EventEnvelope,
    FrameDecoder,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
)
from alknet.core.call.peer import CallPeer, ChannelStream
from alknet.core.node import Node

pytestmark = pytest.mark.timeout(20)

CLIENT = Identity("SHA256:client", ("/*", "events:*"))
WORKER = Identity("SHA256:worker", ("node:dev1",))
HEAD = Identity("SHA256:head", ("*",))


class SpyWriter:
    """Wraps a ``StreamWriter``; records every ``write()`` (for coalescing and on-the-wire checks)."""

    def __init__(self, inner: asyncio.StreamWriter) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    async def drain(self) -> None:
        await self.inner.drain()

    def close(self) -> None:
        self.inner.close()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()

    def frames(self, codec: Any = JSON_CODEC) -> list[EventEnvelope]:
        dec = FrameDecoder(codec)
        dec.feed(b"".join(self.writes))
        return dec.envelopes()

    def types(self, codec: Any = JSON_CODEC) -> list[tuple[str, str]]:
        return [(e.type, e.id) for e in self.frames(codec)]


async def socket_streams(codec: str = "json", *, spy: bool = False) -> tuple[ChannelStream, ChannelStream]:
    """Two connected ends of a real socket pair, as ``ChannelStream``s (writers spied on if ``spy``)."""
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    wa2: Any = SpyWriter(wa) if spy else wa
    wb2: Any = SpyWriter(wb) if spy else wb
    return ChannelStream(ra, wa2, codec), ChannelStream(rb, wb2, codec)


async def connect(
    server: Node | OperationRegistry | None,
    identity: Identity,
    *,
    client: Node | OperationRegistry | None = None,
    client_identity: Identity = HEAD,
    codec: str = "json",
    spy: bool = False,
    server_kw: dict[str, Any] | None = None,
    client_kw: dict[str, Any] | None = None,
) -> tuple[CallPeer, CallPeer]:
    """(server end, client end), both started. The server end sees ``identity``; the client end
    ``client_identity`` (the far side's identity as the client knows it)."""
    s, c = await socket_streams(codec, spy=spy)
    skw = dict(server_kw or {})
    ckw = dict(client_kw or {})
    if isinstance(server, Node):
        skw["node"] = server
    elif server is not None:
        skw["registry"] = server
    if isinstance(client, Node):
        ckw["node"] = client
    elif client is not None:
        ckw["registry"] = client
    sp = CallPeer(s, identity=identity, **skw)
    cp = CallPeer(c, identity=client_identity, **ckw)
    sp.start()
    cp.start()
    return sp, cp


def spec(name: str, op_type: str = "query", **kw: Any) -> OperationSpec:
    return OperationSpec(name, name.split("/")[-2], OperationType(op_type), **kw)


Handler = Callable[[Any, OperationContext], Any]


def echo_registry(**extra: Any) -> OperationRegistry:
    """``/echo/say`` (query echo), ``/echo/count`` (subscription 0..n-1), ``/echo/sleep`` (sleeps ``s``)."""
    reg = OperationRegistry(validate_output=True)

    async def say(input: Any, ctx: OperationContext) -> Any:
        return input

    async def count(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        for i in range(input.get("n", 3) if isinstance(input, dict) else 3):
            yield i

    async def sleep(input: Any, ctx: OperationContext) -> Any:
        await asyncio.sleep(input.get("s", 1.0))
        return "slept"

    reg.register(spec("/echo/say"), say)
    reg.register(spec("/echo/count", "subscription"), count)
    reg.register(spec("/echo/sleep"), sleep)
    for name, (op_type, handler) in extra.items():
        reg.register(spec(name, op_type), handler)
    return reg


def parity_registry() -> OperationRegistry:
    """The operations of the OperationEnv parity suite (also served from a subprocess)."""
    from alknet.core.call import AccessControl, CallError

    reg = OperationRegistry(validate_output=True)

    async def echo(input: Any, ctx: OperationContext) -> Any:
        return input

    async def fail(input: Any, ctx: OperationContext) -> Any:
        if input == "plain":
            raise RuntimeError("boom with details")
        raise CallError("LOCKED", "vault locked", False, {"hint": 1})

    async def sleep(input: Any, ctx: OperationContext) -> Any:
        await asyncio.sleep(input)
        return "slept"

    async def stream(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        for i in (1, 2, 3):
            if input == "fail" and i == 3:
                raise CallError("BROKEN", "after two", False)
            yield i

    async def inner(input: Any, ctx: OperationContext) -> Any:
        return {"parent": ctx.parent_request_id, "trusted": ctx.trusted, "identity": ctx.identity.id}

    async def outer(input: Any, ctx: OperationContext) -> Any:
        resp = await ctx.env.invoke("p", "inner")
        got = resp.unwrap()
        return {"parent_is_outer": got["parent"] == ctx.request_id, "trusted": got["trusted"]}

    async def whoami(input: Any, ctx: OperationContext) -> Any:
        return ctx.identity.id

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reg.register(spec("/p/echo"), echo)
    reg.register(spec("/p/typed", input_schema=schema), echo)
    reg.register(spec("/p/fail"), fail)
    reg.register(spec("/p/sleep"), sleep)
    reg.register(spec("/p/stream", "subscription"), stream)
    reg.register(spec("/p/inner", access_control=AccessControl(("never:held",))), inner)
    reg.register(spec("/p/outer"), outer)
    reg.register(spec("/p/whoami"), whoami)
    return reg


async def serve_service_forever(path: str) -> None:
    """Entry point of the subprocess service server of the parity suite."""
    from alknet.core.call.env import ServiceServer

    async with ServiceServer(parity_registry(), path):
        await asyncio.get_running_loop().create_future()


async def close_all(*peers: CallPeer) -> None:
    for p in peers:
        with contextlib.suppress(Exception):
            await p.close()


def leftover_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the running test's own."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def settle(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``cond()`` holds (polling), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------------------ kit tests


async def test_socket_streams_carry_frames_both_codecs() -> None:
    for codec, c in (("json", JSON_CODEC), ("msgpack", MSGPACK_CODEC)):
        sp, cp = await connect(echo_registry(), CLIENT, codec=codec, spy=True)
        assert await cp.call("/echo/say", {"x": [1, 2.5, "é"]}, timeout=2) == {"x": [1, 2.5, "é"]}
        assert cp.codec is c
        await close_all(cp, sp)
        assert not leftover_tasks()
