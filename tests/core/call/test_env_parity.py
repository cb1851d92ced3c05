"""call-protocol.md §7: the same cases give the same results through the local, service and remote backends.

Backends: local (``strict=True``); service: a real Unix socket in ``tmp_path`` served in this process, and one
served by a subprocess; remote: a ``CallPeer`` over a socket pair, reached through ``env.remote("far", peer)``
(so the prefix is stripped on the way).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_peer_kit as kit

from alknet.core.call import CallError, ResponseEnvelope
from alknet.core.call.env import OperationEnv, ServiceClient, ServiceServer

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).resolve().parent


class Backend:
    def __init__(self, name: str, env: OperationEnv, ns: str, cleanup: list[Any]) -> None:
        self.name, self.env, self.ns, self.cleanup = name, env, ns, cleanup

    async def invoke(self, op: str, input: Any = None, **kw: Any) -> ResponseEnvelope:
        return await self.env.invoke(self.ns, op, input, **kw)

    async def stream(self, op: str, input: Any = None) -> tuple[list[Any], Any]:
        items: list[Any] = []
        try:
            async with self.env.subscribe(self.ns, op, input) as sub:
                async for item in sub:
                    items.append(item)
        except CallError as exc:
            return items, _norm(exc)
        return items, None


def _norm(err: CallError | None) -> Any:
    """An error without the per-call deadline value (deadlines differ between runs by construction)."""
    if err is None:
        return None
    details = dict(err.details or {})
    if "deadline" in details:
        details["deadline"] = "<deadline>"
    return (err.code, err.message, err.retryable, details or None)


def outcome(resp: ResponseEnvelope) -> Any:
    return ("ok", resp.output) if resp.ok else ("error", _norm(resp.error))


async def make_backends(tmp_path: Path) -> AsyncIterator[Backend]:
    yield Backend("local", OperationEnv(strict=True).local(kit.parity_registry()), "p", [])

    sp, cp = await kit.connect(kit.parity_registry(), kit.CLIENT)
    yield Backend("remote", OperationEnv(strict=True).remote("far", cp), "far/p", [cp, sp])

    path = str(tmp_path / "svc.sock")
    server = ServiceServer(kit.parity_registry(), path)
    await server.start()
    client = ServiceClient(path)
    yield Backend("service", OperationEnv(strict=True).service("p", client), "p", [client, server])


CASES: list[tuple[str, Any]] = [
    ("echo", {"nested": {"list": [1, [2, {"x": None}]], "t": True}}),
    ("echo", "unicode é ✓ 𝄞"),
    ("echo", [2**63 - 1, -(2**63), 0.5, -1.25e-10, 1e300]),
    ("echo", None),
    ("echo", (1, 2)),
    ("echo", {1, 2}),
    ("nope", {}),
    ("typed", {"n": "x"}),
    ("typed", {"n": 2}),
    ("fail", "coded"),
    ("fail", "plain"),
    ("outer", None),
    ("stream", None),
]


async def run_cases(b: Backend) -> list[Any]:
    out = [outcome(await b.invoke(op, value)) for op, value in CASES]
    out.append(outcome(await b.invoke("sleep", 1.0, timeout=0.2)))
    out.append(await b.stream("stream"))
    out.append(await b.stream("stream", "fail"))
    out.append(await b.stream("nope"))
    return out


async def test_parity_local_remote_service(tmp_path: Path) -> None:
    results: dict[str, list[Any]] = {}
    cleanup: list[Any] = []
    async for b in make_backends(tmp_path):
        cleanup += b.cleanup
        results[b.name] = await run_cases(b)
        if b.name != "local":
            assert (await b.invoke("echo", 1)).source == b.name
    for c in cleanup:
        await c.close()
    local = results["local"]
    assert local[0] == ("ok", {"nested": {"list": [1, [2, {"x": None}]], "t": True}})
    assert local[4] == ("ok", [1, 2])
    assert local[5] == ("error", ("INVALID_INPUT", "input is not a wire value", False, None))
    assert local[6] == ("error", ("NOT_FOUND", "unknown operation", False, None))
    assert local[7][1][0] == "INVALID_INPUT" and local[7][1][3]["errors"][0]["path"] == "/n"
    assert local[9] == ("error", ("LOCKED", "vault locked", False, {"hint": 1}))
    assert local[10] == ("error", ("INTERNAL", "internal error", False, None))
    assert local[11] == ("ok", {"parent_is_outer": True, "trusted": True})
    assert local[12] == ("ok", 1)  # invoke on a subscription: the first item
    assert local[13] == ("error", ("TIMEOUT", "deadline exceeded", True, {"deadline": "<deadline>"}))
    assert local[14] == ([1, 2, 3], None)
    assert local[15] == ([1, 2], ("BROKEN", "after two", False, None))
    assert local[16] == ([], ("NOT_FOUND", "unknown operation", False, None))
    for name in ("remote", "service"):
        for i, (want, got) in enumerate(zip(local, results[name], strict=True)):
            assert got == want, (name, i)
    assert not kit.leftover_tasks()


async def test_parity_with_a_service_server_in_a_subprocess(tmp_path: Path) -> None:
    path = str(tmp_path / "sub.sock")
    code = f"import asyncio, sys; sys.path.insert(0, {str(HERE)!r}); import test_peer_kit as k; asyncio.run(k.serve_service_forever({path!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        async with asyncio.timeout(30):
            while not os.path.exists(path):
                assert proc.poll() is None, "service subprocess died"
                await asyncio.sleep(0.05)
        client = ServiceClient(path)
        remote_results = await run_cases(
            Backend("service", OperationEnv(strict=True).service("p", client), "p", [])
        )
        local_results = await run_cases(
            Backend("local", OperationEnv(strict=True).local(kit.parity_registry()), "p", [])
        )
        assert remote_results == local_results
        await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
