"""call-protocol.md §6.6, §7: OperationEnv backends, prefix stripping, nested calls, the abort cascade and
service sockets (peer uid, identity, unreachable)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import test_peer_kit as kit

from alknet.core.auth.identity import Identity
from alknet.core.call import AccessControl, CallError, EventEnvelope, OperationContext, OperationRegistry
from alknet.core.call.env import OperationEnv, ServiceClient, ServiceServer
from alknet.core.node import Node

pytestmark = pytest.mark.timeout(20)


async def test_prefix_stripping_on_the_wire() -> None:
    sent: list[EventEnvelope] = []
    sp, cp = await kit.connect(
        kit.parity_registry(), kit.CLIENT, client_kw={"on_frame": lambda d, e: sent.append(e)}
    )
    env = OperationEnv().remote("dev1", cp)
    resp = await env.invoke("dev1/p", "echo", {"x": 1})
    assert resp.output == {"x": 1} and resp.source == "remote"
    req = next(e for e in sent if e.type == "call.requested")
    assert req.payload["operationId"] == "/p/echo"
    await kit.close_all(cp, sp)


async def test_backend_order_and_duplicate_bindings() -> None:
    reg = kit.parity_registry()
    sp, cp = await kit.connect(kit.parity_registry(), kit.CLIENT)
    env = OperationEnv().local(reg).remote("*", cp)
    local = await env.invoke("p", "echo", 1)
    assert local.source == "local"
    # not local, not a route: the "*" peer gets the path unchanged
    fallback = await env.invoke("q/p", "echo", 2)
    assert fallback.error is not None and fallback.error.code == "NOT_FOUND" and fallback.source == "remote"
    assert (await OperationEnv().invoke("p", "echo", 1)).error == CallError(
        "NOT_FOUND", "unknown operation", False
    )
    assert (await env.invoke("bad path", "x")).error is not None
    with pytest.raises(ValueError):
        env.remote("*", cp)
    with pytest.raises(ValueError):
        env.local(reg)
    with pytest.raises(ValueError):
        OperationEnv().service("p", ServiceClient("/nonexistent")).service("p", ServiceClient("/x"))
    await kit.close_all(cp, sp)


async def test_nested_call_is_trusted_with_parent_and_metadata_rules() -> None:
    seen: dict[str, Any] = {}

    async def inner(input: Any, ctx: OperationContext) -> Any:
        seen.update(
            parent=ctx.parent_request_id, trusted=ctx.trusted, md=dict(ctx.metadata), id=ctx.identity.id
        )
        seen["deadline"] = ctx.deadline_ms
        return "inner"

    async def outer(input: Any, ctx: OperationContext) -> Any:
        seen["outer"] = ctx.request_id
        seen["outer_deadline"] = ctx.deadline_ms
        return (
            await ctx.env.invoke("n", "inner", metadata={"alknet.identity": {"id": "root"}, "b": 2})
        ).unwrap()

    reg = OperationRegistry()
    reg.register(kit.spec("/n/inner", access_control=AccessControl(("never:held",))), inner)
    reg.register(kit.spec("/n/outer"), outer)
    sp, cp = await kit.connect(reg, Identity("SHA256:c", ("/n/outer",)))
    assert await cp.call("/n/outer", None, timeout=5, metadata={"a": 1, "alknet.hops": 7}) == "inner"
    assert seen["parent"] == seen["outer"] and seen["trusted"] is True and seen["id"] == "SHA256:c"
    assert seen["md"] == {"a": 1, "b": 2}
    assert seen["deadline"] <= seen["outer_deadline"]
    with pytest.raises(CallError) as ei:
        await cp.call("/n/inner", None)
    assert ei.value.code == "FORBIDDEN"
    await kit.close_all(cp, sp)


async def test_abort_cascade_over_remote() -> None:
    """Cancelling an outer handler that awaits a remote nested call puts call.aborted for the nested id on the wire."""
    started = asyncio.Event()
    cancelled: list[str] = []

    async def slow(input: Any, ctx: OperationContext) -> Any:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(ctx.request_id)
            raise
        return "late"

    b_reg = OperationRegistry()
    b_reg.register(kit.spec("/b/slow"), slow)
    a_to_b_server, a_to_b = await kit.connect(b_reg, kit.CLIENT, spy=True)

    async def outer(input: Any, ctx: OperationContext) -> Any:
        return (await ctx.env.invoke("b/b", "slow")).unwrap()

    a = Node("a", OperationRegistry())
    a.registry.register(kit.spec("/a/outer"), outer)
    a.env.remote("b", a_to_b)
    ap, cp = await kit.connect(a, kit.CLIENT)
    call = asyncio.create_task(cp.call("/a/outer", None, timeout=5))
    await asyncio.wait_for(started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await kit.settle(lambda: len(cancelled) == 1)
    frames = a_to_b.writer._writer.frames()  # type: ignore[attr-defined]
    nested = next(e for e in frames if e.type == "call.requested")
    assert ("call.aborted", nested.id) in [(e.type, e.id) for e in frames]
    assert cancelled == [nested.id]
    await kit.close_all(cp, ap, a_to_b, a_to_b_server)
    assert not kit.leftover_tasks()


async def test_env_subscription_idle_timeout_local_and_cancel() -> None:
    async def once(input: Any, ctx: OperationContext) -> Any:
        yield 1
        await asyncio.sleep(10)

    reg = OperationRegistry()
    reg.register(kit.spec("/s/once", "subscription"), once)
    env = OperationEnv().local(reg)
    items = []
    with pytest.raises(CallError) as ei:
        async for x in env.subscribe("s", "once", idle_timeout=0.1):
            items.append(x)
    assert items == [1] and ei.value == CallError(
        "TIMEOUT", "idle timeout exceeded", True, {"idleTimeout": 100}
    )


# ------------------------------------------------------------------------------------- service sockets


async def test_service_identity_is_honoured_and_trusted(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with ServiceServer(kit.parity_registry(), path, mode=0o600):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        client = ServiceClient(path)
        env = OperationEnv(identity=Identity("SHA256:app", ("x:y",))).service("p", client)
        resp = await env.invoke("p", "whoami")
        assert resp.output == "SHA256:app" and resp.source == "service"
        # a trusted service call may reach an operation the identity holds no grant for
        inner = await env.invoke("p", "inner")
        assert inner.output["trusted"] is True and inner.output["identity"] == "SHA256:app"
        await client.close()
    assert not os.path.exists(path)


async def test_service_refuses_foreign_uid_before_any_frame(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with ServiceServer(kit.parity_registry(), path, peercred=lambda sock: os.geteuid() + 4242):
        reader, writer = await asyncio.open_unix_connection(path)
        from alknet.core.call import MSGPACK_CODEC, call_requested, encode_frame

        writer.write(encode_frame(call_requested("r1", "/p/echo", 1), MSGPACK_CODEC))
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed without any frame answered
        writer.close()
    async with ServiceServer(
        kit.parity_registry(), path, peercred=lambda sock: 4242, allowed_uids=frozenset({4242})
    ):
        client = ServiceClient(path)
        assert (await client.request("/p/echo", 5)).output == 5
        await client.close()


async def test_service_unreachable_and_reconnect(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    client = ServiceClient(path)
    resp = await client.request("/p/echo", 1)
    assert (
        resp.error == CallError("UNAVAILABLE", "service socket unreachable", True)
        and resp.source == "service"
    )
    with pytest.raises(CallError):
        async for _ in client.open_subscription("/p/stream"):
            pass
    Path(path).write_text("stale")  # a regular file is not replaced
    with pytest.raises(OSError):
        await ServiceServer(kit.parity_registry(), path).start()
    os.unlink(path)
    async with ServiceServer(kit.parity_registry(), path):
        assert (await client.request("/p/echo", 2)).output == 2
    async with ServiceServer(kit.parity_registry(), path):  # the client reconnects after the server restarted
        await kit.settle(lambda: client._peer is None or client._peer.closed)
        assert (await client.request("/p/echo", 3)).output == 3
    await client.close()
    assert not kit.leftover_tasks()
