#!/usr/bin/env python3
"""Call-protocol bench, NATS baseline (``call-protocol.md`` §12): nats-py request/reply via Debian's nats-server.

Debian's ``nats-server`` is started on a free loopback port, with a nats-py responder process that answers every
request on ``bench.echo`` with its own bytes, and a nats-py client process per round doing request/reply with the
JSON bytes ``{"path":"/srv/example.txt","offset":0,"length":4096}``. Skipped with a message when ``nats-server``
is not installed (Debian package ``nats-server``).

Per round: 500 warm-up calls, 5,000 sequential calls (p50/p99 of the round trip), then 256 concurrent callers
for 10 s (calls/s); medians over rounds.

    uv run python bench/nats_baseline.py            # just the NATS row
    uv run python bench/nats_baseline.py --quick    # smoke run (the numbers mean nothing)
"""

from __future__ import annotations

import argparse
from typing import Any

import _callbench as B
import _callreport as R
import _common as C

ROWS = ("nats",)


# ============================================================================================ child roles


async def role_nats_responder(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{args.port}", allow_reconnect=False)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(B.NATS_SUBJECT, cb=echo)
    await nc.flush()
    B.emit({"ready": True})
    try:
        await B.until_stdin_eof_or_signal()
    finally:
        await nc.close()


async def role_nats_client(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{args.port}", allow_reconnect=False)
    reply = await nc.request(B.NATS_SUBJECT, B.PAYLOAD_JSON, timeout=10)
    if reply.data != B.PAYLOAD_JSON:
        raise SystemExit(f"nats echo returned {reply.data!r}")

    async def once() -> Any:
        return await nc.request(B.NATS_SUBJECT, B.PAYLOAD_JSON, timeout=30)

    result = await B.measure(once, args)
    await nc.close()
    B.emit(result)


ROLES: dict[str, B.Role] = {"nats-responder": role_nats_responder, "nats-client": role_nats_client}


# ============================================================================================ the parent


def _missing(args: argparse.Namespace) -> str | None:
    if R.find_nats_server(args.nats_server) is None:
        return "nats-server is not installed (Debian package nats-server): the NATS baseline is skipped"
    return None


def _start(lab: B.Lab, args: argparse.Namespace) -> tuple[C.Child, C.Child, int]:
    """``(nats-server, responder, port)``."""
    binary = R.find_nats_server(args.nats_server)
    assert binary is not None
    port = C.free_port()
    server = lab.spawn("nats-server", [binary, "-a", "127.0.0.1", "-p", str(port)])
    C.wait_port(port, 15, server)
    responder = lab.role("nats-responder", "--port", str(port), stdin=True)
    B.read_json(responder, 30)
    return server, responder, port


def _client(row: str, state: tuple[C.Child, C.Child, int], lab: B.Lab) -> tuple[str, list[str], list[int]]:
    server, responder, port = state
    return "nats-client", ["--port", str(port)], [server.pid, responder.pid]


PART = B.Part(ROWS, _start, _client, _missing)


def main(argv: list[str] | None = None) -> int:
    return B.standalone(argv, __doc__, [PART], ROLES)


if __name__ == "__main__":
    B.cli(main)
