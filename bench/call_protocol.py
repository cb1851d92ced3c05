#!/usr/bin/env python3
"""Call-protocol bench, alknet rows (``call-protocol.md`` §12): calls over the SSH control channel and raw framing.

A server process (``SshServer`` with ``node.serve_channel`` installed as the ``alknet-control`` handler, plus a
``RawListener`` on the same ``Node``) serves ``/bench/echo``, a query with a validated three-property input schema
that returns its input ``{"path":"/srv/example.txt","offset":0,"length":4096}``. A client process per row and
round calls it over the SSH control channel (``alknet-control:0`` JSON, ``:1`` msgpack; ``aes128-gcm@openssh.com``)
and, as a reference row, over raw framing on tcp (``auth.token``).

Per row and round: 500 warm-up calls, 5,000 sequential calls (p50/p99 of the round trip), then 256 concurrent
callers for 10 s (calls/s); rows interleaved, order rotated each round; medians over rounds.

    uv run python bench/call_protocol.py            # just the alknet rows
    uv run python bench/call_protocol.py --quick    # smoke run (the numbers mean nothing)

``run_all.py`` runs these rows next to the NATS and gRPC baselines and checks the requirements.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import _callbench as B
from _common import Child

ROWS = ("alknet ssh json", "alknet ssh msgpack", "alknet raw json", "alknet raw msgpack")


# ============================================================================================ child roles


def _bench_node(schema: bool = True) -> Any:
    from alknet.core.call import OperationContext, OperationRegistry, OperationSpec, OperationType
    from alknet.core.node import Node

    registry = OperationRegistry()

    async def echo(input: Any, ctx: OperationContext) -> Any:
        return input

    spec = OperationSpec(B.OP, "bench", OperationType.QUERY, input_schema=B.INPUT_SCHEMA if schema else {})
    registry.register(spec, echo)
    return Node(registry=registry)


async def role_alknet_server(args: argparse.Namespace) -> None:
    from alknet.core.config.reloader import ConfigReloader, build_dynamic
    from alknet.core.config.static import ListenerSpec
    from alknet.core.raw import RawListener
    from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions

    loaded = build_dynamic(Path(args.authorized_keys))
    reloader = ConfigReloader.from_loaded(loaded)
    options = SshServerOptions(
        host_key=Path(args.host_key),
        listeners=(ServerListener(ListenerSpec(kind="tcp", host="127.0.0.1", port=0)),),
    )
    server = SshServer(options, reloader)
    node = _bench_node(schema=not args.no_schema)
    server.control.install(node.serve_channel)
    await server.start()
    raw = RawListener(("127.0.0.1", 0), node, server.provider, server.dynamic, server.limiter)
    await raw.start()
    ssh_port = int(server.listen_addrs[0].rpartition(":")[2])
    B.emit({"ssh_port": ssh_port, "raw_port": raw.ports[0], "host_key": server.host_key_fingerprint})
    try:
        await B.until_stdin_eof_or_signal()
    finally:
        await raw.close()
        await server.close(drain=0)
        await node.close()


async def alknet_channel(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(CallPeer, closer)`` over the chosen carrier and codec."""
    from alknet.core.auth.keys import load_private_key
    from alknet.core.auth.token import mint_token
    from alknet.core.call import CallPeer, ChannelStream
    from alknet.core.raw import open_raw_channel
    from alknet.core.ssh.client import ClientOptions, SshClient

    if args.carrier == "raw":
        token = mint_token(load_private_key(Path(args.identity)), int(time.time()))
        stream, _ = await open_raw_channel("127.0.0.1", args.port, token, codec=args.codec, timeout=10)
        return CallPeer(stream), None
    client = SshClient(
        ClientOptions(
            server=f"127.0.0.1:{args.port}", identity=Path(args.identity), host_key=args.host_key_fp
        )
    )
    conn = await client.connect()
    reader, writer = await conn.open_channel("alknet-control", 0 if args.codec == "json" else 1)
    return CallPeer(ChannelStream(reader, writer, args.codec)), conn


async def role_alknet_client(args: argparse.Namespace) -> None:
    peer, conn = await alknet_channel(args)
    async with peer:
        out = await peer.call(B.OP, B.PAYLOAD, timeout=10)
        if out != B.PAYLOAD:
            raise SystemExit(f"echo returned {out!r}")

        async def once() -> Any:
            return await peer.call(B.OP, B.PAYLOAD, timeout=30)

        result = await B.measure(once, args)
    if conn is not None:
        await conn.aclose()
    B.emit(result)


ROLES: dict[str, B.Role] = {"alknet-server": role_alknet_server, "alknet-client": role_alknet_client}


# ============================================================================================ the parent


def start_server(lab: B.Lab, *, no_schema: bool = False) -> tuple[Child, dict[str, Any]]:
    """A fresh alknet server; ``(child, {"ssh_port", "raw_port", "host_key"})``."""
    server = lab.role(
        "alknet-server",
        "--host-key",
        str(lab.host_key),
        "--authorized-keys",
        str(lab.authorized_keys),
        *(["--no-schema"] if no_schema else []),
        stdin=True,
    )
    return server, B.read_json(server, 30)


def _start(lab: B.Lab, args: argparse.Namespace) -> tuple[Child, dict[str, Any]]:
    return start_server(lab, no_schema=args.no_schema)


def _client(row: str, state: tuple[Child, dict[str, Any]], lab: B.Lab) -> tuple[str, list[str], list[int]]:
    server, info = state
    _, carrier, codec = row.split()
    port = info["ssh_port"] if carrier == "ssh" else info["raw_port"]
    args = ["--carrier", carrier, "--codec", codec, "--port", str(port), "--identity", str(lab.identity)]
    args += ["--host-key-fp", info["host_key"]]
    return "alknet-client", args, [server.pid]


PART = B.Part(ROWS, _start, _client)


def main(argv: list[str] | None = None) -> int:
    return B.standalone(argv, __doc__, [PART], ROLES)


if __name__ == "__main__":
    B.cli(main)
