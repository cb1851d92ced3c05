"""call-protocol.md §8: head and worker end to end over real socket pairs (no SSH).

A worker dials the head: the head's end of the channel carries the worker's session identity; the worker's end
carries the head's (``trust=HEAD``, so ``alknet.forwardedFor``/``alknet.hops`` are honoured from it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import test_peer_kit as kit

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    AccessControl,
    CallError,
    EventEnvelope,
    OperationContext,
    OperationRegistry,
)
from alknet.core.call.peer import CallPeer, ChannelTrust
from alknet.core.node import Node

pytestmark = pytest.mark.timeout(20)

F13_SPEC_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
F13 = (
    '{"type":"call.requested","id":"00000000-0000-4000-8000-000000000001","payload":{"requestId":'
    '"00000000-0000-4000-8000-000000000001","operationId":"/head/services/register","input":{"node":"dev1",'
    '"operations":[{"name":"/fs/readFile","namespace":"fs","opType":"query","inputSchema":{"type":"object",'
    '"properties":{"path":{"type":"string"}},"required":["path"]},"outputSchema":{"type":"object"},'
    '"accessControl":{"requiredScopes":["fs:read"]}}]}}}'
)


class Seen:
    """What the worker's handlers observed."""

    def __init__(self) -> None:
        self.contexts: list[OperationContext] = []
        self.cancelled: list[str] = []
        self.started = asyncio.Event()


def worker_registry(seen: Seen) -> OperationRegistry:
    reg = OperationRegistry(validate_output=True)

    async def read_file(input: Any, ctx: OperationContext) -> Any:
        seen.contexts.append(ctx)
        return {"text": f"contents of {input['path']}"}

    async def slow(input: Any, ctx: OperationContext) -> Any:
        seen.contexts.append(ctx)
        seen.started.set()
        try:
            await asyncio.sleep(input.get("s", 5))
        except asyncio.CancelledError:
            seen.cancelled.append(ctx.request_id)
            raise
        return "late"

    async def tail(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        seen.contexts.append(ctx)
        try:
            i = 0
            while True:
                yield {"line": i}
                i += 1
                seen.started.set()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            seen.cancelled.append(ctx.request_id)
            raise

    reg.register(
        kit.spec(
            "/fs/readFile",
            input_schema=F13_SPEC_SCHEMA,
            output_schema={"type": "object"},
            access_control=AccessControl(("fs:read",)),
        ),
        read_file,
    )
    reg.register(kit.spec("/fs/slow"), slow)
    reg.register(kit.spec("/logs/tail", "subscription"), tail)
    return reg


class Cluster:
    """A head plus helpers to attach workers and clients over socket pairs."""

    def __init__(self) -> None:
        self.head = Node("head", accept_workers=True)
        self.peers: list[CallPeer] = []

    async def worker(
        self,
        name: str = "dev1",
        identity: Identity = kit.WORKER,
        seen: Seen | None = None,
        *,
        register: bool = True,
    ) -> tuple[Node, CallPeer, CallPeer]:
        """(worker node, head's end, worker's end); registered as ``name`` unless ``register=False``."""
        node = Node(name if name != "head" else "w", worker_registry(seen or Seen()))
        hp, wp = await kit.connect(self.head, identity, client=node, client_kw={"trust": ChannelTrust.HEAD})
        self.peers += [hp, wp]
        if register:
            await node.register_with(wp, name)
        return node, hp, wp

    async def client(self, identity: Identity = kit.CLIENT, **kw: Any) -> tuple[CallPeer, CallPeer]:
        hp, cp = await kit.connect(self.head, identity, **kw)
        self.peers += [hp, cp]
        return hp, cp

    async def close(self) -> None:
        await kit.close_all(*self.peers)
        assert not kit.leftover_tasks()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


FS_CLIENT = Identity("SHA256:client", ("/dev1/*", "fs:read"))


# ------------------------------------------------------------------------------------------ forwarding


async def test_forwarding_strips_prefix_and_carries_parent_and_forwarded_for(cluster: Cluster) -> None:
    seen = Seen()
    _, _, wp = await cluster.worker(seen=seen)
    wire: list[EventEnvelope] = []
    wp._on_frame = lambda d, env: wire.append(env) if d == "in" else None
    sent: list[EventEnvelope] = []
    _, cp = await cluster.client(FS_CLIENT, client_kw={"on_frame": lambda d, env: sent.append(env)})
    out = await cp.call("/dev1/fs/readFile", {"path": "/etc/motd"}, timeout=5)
    assert out == {"text": "contents of /etc/motd"}
    client_rid = sent[0].payload["requestId"]
    req = next(e for e in wire if e.type == "call.requested" and e.payload["operationId"] == "/fs/readFile")
    assert req.payload["parentRequestId"] == client_rid
    assert req.payload["requestId"] != client_rid
    ctx = seen.contexts[-1]
    assert ctx.parent_request_id == client_rid
    assert ctx.metadata["alknet.forwardedFor"] == "SHA256:client"
    assert ctx.metadata["alknet.hops"] == 1
    assert ctx.identity == kit.HEAD  # the worker runs head calls as the pinned head
    assert "deadline" in req.payload  # the caller's deadline is forwarded


async def test_grants_path_and_access_control(cluster: Cluster) -> None:
    await cluster.worker()
    _, path_only = await cluster.client(Identity("SHA256:a", ("/dev1/*",)))
    _, no_grant = await cluster.client(Identity("SHA256:b", ("fs:read",)))
    _, ok = await cluster.client(FS_CLIENT)
    for cp in (path_only, no_grant):
        with pytest.raises(CallError) as ei:
            await cp.call("/dev1/fs/readFile", {"path": "/x"}, timeout=5)
        assert ei.value.code == "FORBIDDEN"
    assert await ok.call("/head/dev1/fs/readFile", {"path": "/x"}, timeout=5) == {"text": "contents of /x"}
    with pytest.raises(CallError) as ei:
        await ok.call("/dev1/fs/readFile", {"path": 3}, timeout=5)
    assert ei.value.code == "INVALID_INPUT" and ei.value.details["errors"][0]["path"] == "/path"
    with pytest.raises(CallError) as ei:
        await ok.call("/dev1/fs/nope", {}, timeout=5)
    assert ei.value.code == "NOT_FOUND"


async def test_services_list_on_head_includes_routed_operations(cluster: Cluster) -> None:
    await cluster.worker()
    _, cp = await cluster.client(FS_CLIENT)
    ops = [o["name"] for o in (await cp.call("/services/list", {}, timeout=5))["operations"]]
    assert "/dev1/fs/readFile" in ops and "/dev1/fs/slow" in ops and "/services/list" in ops
    assert (await cp.call("/services/schema", {"name": "/dev1/fs/readFile"}, timeout=5))["opType"] == "query"


async def test_payload_identity_is_ignored(cluster: Cluster) -> None:
    seen = Seen()
    await cluster.worker(seen=seen)
    s, c = await kit.socket_streams()
    hp = CallPeer(s, node=cluster.head, identity=Identity("SHA256:nobody"))
    hp.start()
    cluster.peers.append(hp)
    rid = "00000000-0000-4000-8000-0000000000aa"
    body = (
        f'{{"type":"call.requested","id":"{rid}","payload":{{"requestId":"{rid}","operationId":"/dev1/fs/readFile",'
        f'"input":{{"path":"/x"}},"identity":{{"id":"root","scopes":["*"]}}}}}}'
    )
    c.writer.write(jframe_raw(body))
    await c.writer.drain()
    reply = await kit_read(c)
    assert reply.type == "call.error" and reply.payload["code"] == "FORBIDDEN"
    assert seen.contexts == []
    c.writer.close()  # type: ignore[attr-defined]


def jframe_raw(body: str) -> bytes:
    raw = body.encode()
    return len(raw).to_bytes(4, "big") + raw


async def kit_read(stream: Any) -> EventEnvelope:
    from alknet.core.call import JSON_CODEC, FrameReader

    env = await asyncio.wait_for(FrameReader(stream.reader, JSON_CODEC).read(), 5)
    assert env is not None
    return env


async def test_f13_registration_frame(cluster: Cluster) -> None:
    s, c = await kit.socket_streams()
    hp = CallPeer(s, node=cluster.head, identity=kit.WORKER)
    hp.start()
    cluster.peers.append(hp)
    c.writer.write(jframe_raw(F13))
    await c.writer.drain()
    reply = await kit_read(c)
    assert reply.type == "call.responded"
    assert reply.payload["output"] == {"node": "dev1", "operations": ["/dev1/fs/readFile"]}
    assert cluster.head.routes() == {"dev1": ["/dev1/fs/readFile"]}
    c.writer.close()  # type: ignore[attr-defined]
    await kit.settle(lambda: not cluster.head.routes())


# ---------------------------------------------------------------------------------------- registration


@pytest.mark.parametrize(
    ("scopes", "name", "code"),
    [
        (("node:dev1",), "dev2", "FORBIDDEN"),
        ((), "dev1", "FORBIDDEN"),
        (("node:dev1",), "head", "INVALID_INPUT"),
        (("node:*",), "Dev_1", "INVALID_INPUT"),
    ],
)
async def test_registration_refusals(cluster: Cluster, scopes: tuple[str, ...], name: str, code: str) -> None:
    _, _, wp = await cluster.worker("dev1", Identity("SHA256:w", scopes), register=False)
    with pytest.raises(CallError) as ei:
        await wp.register(name)
    assert ei.value.code == code
    assert cluster.head.routes() == {}


async def test_node_wildcard_allows_any_name(cluster: Cluster) -> None:
    _, _, wp = await cluster.worker("dev1", Identity("SHA256:w", ("node:*",)), register=False)
    assert "/dev7/fs/readFile" in await wp.register("dev7")


async def test_conflict_then_retry_after_disconnect(cluster: Cluster) -> None:
    _, hp1, wp1 = await cluster.worker()
    _, _, wp2 = await cluster.worker(register=False)
    with pytest.raises(CallError) as ei:
        await wp2.register("dev1")
    assert ei.value.code == "CONFLICT"
    _, cp = await cluster.client(FS_CLIENT)
    assert await cp.call("/dev1/fs/readFile", {"path": "/a"}, timeout=5) == {"text": "contents of /a"}
    assert cluster.head._routes["dev1"].peer is hp1
    await wp1.close()
    await kit.settle(lambda: "dev1" not in cluster.head.routes())
    assert "/dev1/fs/readFile" in await wp2.register("dev1")
    assert await cp.call("/dev1/fs/readFile", {"path": "/b"}, timeout=5) == {"text": "contents of /b"}


async def test_refused_registration_keeps_previous_set_and_reregister_replaces(cluster: Cluster) -> None:
    _, _, wp = await cluster.worker()
    before = cluster.head.routes()
    bad = [kit.spec("/fs/a").to_wire(), kit.spec("/fs/a").to_wire()]
    with pytest.raises(CallError) as ei:
        await wp.call("/head/services/register", {"node": "dev1", "operations": bad}, timeout=5)
    assert ei.value.code == "INVALID_INPUT"
    assert cluster.head.routes() == before
    with pytest.raises(CallError) as ei:
        await wp.register("other", [])
    assert ei.value.code in ("FORBIDDEN", "INVALID_INPUT")
    assert await wp.register("dev1", [kit.spec("/fs/only")]) == ["/dev1/fs/only"]
    assert cluster.head.routes() == {"dev1": ["/dev1/fs/only"]}


async def test_same_channel_other_name_is_invalid(cluster: Cluster) -> None:
    _, _, wp = await cluster.worker("dev1", Identity("SHA256:w", ("node:*",)))
    with pytest.raises(CallError) as ei:
        await wp.register("dev2")
    assert ei.value.code == "INVALID_INPUT"


# ------------------------------------------------------------------------------------ lifecycle


async def test_worker_disconnect_fails_in_flight_and_routes_vanish(cluster: Cluster) -> None:
    seen = Seen()
    _, _, wp = await cluster.worker(seen=seen)
    events = cluster.head.bus.subscribe("head.node.removed")
    _, cp = await cluster.client(Identity("SHA256:c", ("/dev1/*",)))
    call = asyncio.create_task(cp.call("/dev1/fs/slow", {"s": 5}, timeout=10))
    await asyncio.wait_for(seen.started.wait(), 5)
    t0 = time.monotonic()
    await wp.close()
    with pytest.raises(CallError) as ei:
        await call
    assert ei.value.code == "UNAVAILABLE" and time.monotonic() - t0 < 2
    assert cluster.head.routes() == {}
    with pytest.raises(CallError) as ei:
        await cp.call("/dev1/fs/slow", {"s": 0}, timeout=5)
    assert ei.value.code == "NOT_FOUND"
    ev = await asyncio.wait_for(events.__anext__(), 2)
    assert ev == EventEnvelope("head.node.removed", "dev1", {"node": "dev1", "reason": "closed"})
    await events.aclose()


async def test_head_calls_dial_out_worker_while_worker_calls_head(cluster: Cluster) -> None:
    seen = Seen()
    _, _, wp = await cluster.worker(seen=seen)
    slow = asyncio.create_task(cluster.head.call("/dev1/fs/slow", {"s": 0.3}, timeout=5))
    await asyncio.wait_for(seen.started.wait(), 5)
    listed = await wp.call("/head/services/list", {}, timeout=5)  # same channel, other direction
    assert any(o["name"] == "/services/list" for o in listed["operations"])
    assert await slow == "late"
    resp = await cluster.head.env.invoke("dev1/fs", "readFile", {"path": "/p"})
    assert resp.output == {"text": "contents of /p"} and resp.ok
    # the worker's env reaches its head with remote("head", peer)
    wnode = wp.node
    assert wnode is not None
    r2 = await wnode.env.invoke("head/services", "list", {})
    assert r2.ok and r2.source == "remote"


# ----------------------------------------------------------------------------- deadlines and aborts


async def test_deadline_propagates_across_the_hop(cluster: Cluster) -> None:
    seen = Seen()
    _, _, wp = await cluster.worker(seen=seen)
    hp, cp = await cluster.client(Identity("SHA256:c", ("/dev1/*",)))
    t0 = time.monotonic()
    with pytest.raises(CallError) as ei:
        await cp.call("/dev1/fs/slow", {"s": 1.0}, timeout=0.2)
    elapsed = time.monotonic() - t0
    assert ei.value.code == "TIMEOUT" and 0.19 <= elapsed < 0.35
    await kit.settle(lambda: len(seen.cancelled) == 1)
    await kit.settle(lambda: len(cp.pending) == 0 and len(hp.inbound) == 0 and len(wp.inbound) == 0)
    assert all(len(p.pending) == 0 for p in cluster.peers)
    ctx = seen.contexts[-1]
    assert ctx.deadline_ms is not None


async def test_caller_abort_cancels_forwarded_subscription(cluster: Cluster) -> None:
    seen = Seen()
    _, _, wp = await cluster.worker(seen=seen)
    _, cp = await cluster.client(Identity("SHA256:c", ("/dev1/*",)))
    async with cp.subscribe("/dev1/logs/tail", {}) as sub:
        got = [await sub.__anext__() for _ in range(3)]
    assert got == [{"line": 0}, {"line": 1}, {"line": 2}]
    await kit.settle(lambda: len(seen.cancelled) == 1)
    await kit.settle(lambda: len(wp.inbound) == 0)


async def test_local_abort_of_forwarded_call(cluster: Cluster) -> None:
    seen = Seen()
    await cluster.worker(seen=seen)
    sent: list[EventEnvelope] = []
    _, cp = await cluster.client(
        Identity("SHA256:c", ("/dev1/*",)), client_kw={"on_frame": lambda d, e: sent.append(e)}
    )
    call = asyncio.create_task(cp.call("/dev1/fs/slow", {"s": 5}, timeout=10))
    await asyncio.wait_for(seen.started.wait(), 5)
    rid = sent[0].payload["requestId"]
    assert cp.abort(rid) is True
    with pytest.raises(CallError) as ei:
        await call
    assert ei.value.code == "ABORTED"
    assert ("call.aborted", rid) in [(e.type, e.id) for e in sent]
    await kit.settle(lambda: len(seen.cancelled) == 1)
    assert cp.abort(rid) is False


# ------------------------------------------------------------------------------------------ multi-hop


async def test_multi_hop_chain_and_reregistration() -> None:
    top = Node("head", accept_workers=True)
    mid = Node("mid", accept_workers=True)
    seen = Seen()
    w1 = Node("w1", worker_registry(seen))
    t_end, m_up = await kit.connect(
        top, Identity("SHA256:mid", ("node:mid",)), client=mid, client_kw={"trust": "head"}
    )
    await mid.register_with(m_up, "mid")
    m_end, w_up = await kit.connect(
        mid, Identity("SHA256:w1", ("node:w1",)), client=w1, client_kw={"trust": "head"}
    )
    await w1.register_with(w_up, "w1")
    # mid re-registers upward (debounced) once w1 appears
    await kit.settle(lambda: "/mid/w1/fs/readFile" in top.routes().get("mid", []))
    c_end, cp = await kit.connect(top, Identity("SHA256:top-client", ("/mid/*", "fs:read")))
    out = await cp.call("/mid/w1/fs/readFile", {"path": "/z"}, timeout=5)
    assert out == {"text": "contents of /z"}
    ctx = seen.contexts[-1]
    assert ctx.metadata["alknet.hops"] == 2
    assert ctx.metadata["alknet.forwardedFor"] == "SHA256:top-client"
    # w1 leaves: mid's upward registration shrinks again
    await w_up.close()
    await kit.settle(lambda: not any("/w1/" in p for p in top.routes().get("mid", [])))
    await kit.close_all(cp, c_end, m_end, t_end, m_up)
    assert not kit.leftover_tasks()


async def test_forced_loop_stops_at_hop_limit() -> None:
    seen = Seen()
    a = Node("a", worker_registry(seen), accept_workers=True)
    # a registers with itself over one channel as node "a", with routed paths that point back into "a"
    a_end, a_up = await kit.connect(
        a, Identity("SHA256:a", ("node:a",)), client=a, client_kw={"trust": "head"}
    )
    loop_specs = [kit.spec("/fs/readFile")] + [kit.spec("/a" * k + "/fs/readFile") for k in range(1, 12)]
    await a_up.register("a", loop_specs)
    ok = await a.call("/a/fs/readFile", {"path": "/q"})
    assert ok == {"text": "contents of /q"} and seen.contexts[-1].metadata["alknet.hops"] == 1
    with pytest.raises(CallError) as ei:
        await a.call("/a" * 10 + "/fs/readFile", {"path": "/q"})
    assert ei.value == CallError("UNAVAILABLE", "hop limit", False)
    await kit.close_all(a_up, a_end)
    assert not kit.leftover_tasks()


async def test_status_lists_workers_and_needs_admin_status(cluster: Cluster) -> None:
    await cluster.worker()
    _, admin = await cluster.client(Identity("SHA256:admin", ("admin:status",)))
    _, other = await cluster.client(FS_CLIENT)
    status = await admin.call("/services/status", {}, timeout=5)
    assert [w["node"] for w in status["workers"]] == ["dev1"]
    assert status["workers"][0]["identity"] == kit.WORKER.id and status["workers"][0]["operations"] == 3
    assert {s["identity"] for s in status["sessions"]} >= {"SHA256:admin", kit.WORKER.id}
    with pytest.raises(CallError) as ei:
        await other.call("/services/status", {}, timeout=5)
    assert ei.value.code == "FORBIDDEN"
