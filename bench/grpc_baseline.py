#!/usr/bin/env python3
"""Call-protocol bench, gRPC baseline (``call-protocol.md`` §12): grpcio ``grpc.aio`` unary calls.

A ``grpc.aio`` server process with a generic unary bytes handler for ``/bench.Echo/Echo`` (no protoc step) that
returns its request, and a ``grpc.aio`` client process per round on an insecure loopback channel sending the JSON
bytes ``{"path":"/srv/example.txt","offset":0,"length":4096}``.

Per round: 500 warm-up calls, 5,000 sequential calls (p50/p99 of the round trip), then 256 concurrent callers
for 10 s (calls/s); medians over rounds.

    uv run python bench/grpc_baseline.py            # just the gRPC row
    uv run python bench/grpc_baseline.py --quick    # smoke run (the numbers mean nothing)
"""

from __future__ import annotations

import argparse
from typing import Any

import _callbench as B
import _common as C

ROWS = ("grpc",)


# ============================================================================================ child roles


async def role_grpc_server(args: argparse.Namespace) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    B.emit({"port": port})
    try:
        await B.until_stdin_eof_or_signal()
    finally:
        await server.stop(0)


async def role_grpc_client(args: argparse.Namespace) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        stub = channel.unary_unary(B.GRPC_METHOD)
        reply = await stub(B.PAYLOAD_JSON, timeout=10)
        if reply != B.PAYLOAD_JSON:
            raise SystemExit(f"grpc echo returned {reply!r}")

        async def once() -> Any:
            return await stub(B.PAYLOAD_JSON, timeout=30)

        result = await B.measure(once, args)
    B.emit(result)


ROLES: dict[str, B.Role] = {"grpc-server": role_grpc_server, "grpc-client": role_grpc_client}


# ============================================================================================ the parent


def _start(lab: B.Lab, args: argparse.Namespace) -> tuple[C.Child, int]:
    server = lab.role("grpc-server", stdin=True)
    return server, int(B.read_json(server, 30)["port"])


def _client(row: str, state: tuple[C.Child, int], lab: B.Lab) -> tuple[str, list[str], list[int]]:
    server, port = state
    return "grpc-client", ["--port", str(port)], [server.pid]


PART = B.Part(ROWS, _start, _client)


def main(argv: list[str] | None = None) -> int:
    return B.standalone(argv, __doc__, [PART], ROLES)


if __name__ == "__main__":
    B.cli(main)
