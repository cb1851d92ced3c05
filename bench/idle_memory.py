#!/usr/bin/env python3
"""Call-protocol bench, memory (``call-protocol.md`` §12): server RSS per idle connection with a control channel.

Per kind and round: a fresh alknet server (the same process as ``call_protocol.py``'s), one client process that
opens 5 warm-up connections, then (after the server's VmRSS is read) ``--sessions`` more, 16 at a time, each with
one channel and a ``CallPeer`` that makes one call and then stays idle; after 1 s the server's VmRSS is read again
and the growth is divided by ``--sessions``. The client checks that every connection opened.

Kinds (``--kinds``): ``ssh json`` and ``ssh msgpack`` (an SSH connection with one ``alknet-control`` channel,
port 0 / port 1: the §12 requirement cells), and ``raw json`` (a raw-framing connection on tcp, for reference).

    uv run python bench/idle_memory.py                  # 1,000 idle connections per kind
    uv run python bench/idle_memory.py --quick          # 20 (the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import _callbench as B
import _callreport as R
import call_protocol
from _common import rss_kib

# ============================================================================================ child role


async def role_alknet_idle(args: argparse.Namespace) -> None:
    """Open ``--warm`` connections, report, wait for a line on stdin, open ``--count`` more, report, then hold
    them until stdin closes."""
    held: list[tuple[Any, Any]] = []
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            peer, conn = await call_protocol.alknet_channel(args)
            peer.start()
            await peer.call(B.OP, B.PAYLOAD, timeout=30)
            held.append((peer, conn))

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(one() for _ in range(args.warm)))
    B.emit({"opened": len(held)})
    await loop.run_in_executor(None, sys.stdin.buffer.readline)
    await asyncio.gather(*(one() for _ in range(args.count)))
    B.emit({"opened": len(held)})
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    for peer, conn in held:
        await peer.close()
        if conn is not None:
            conn.close()


ROLES: dict[str, B.Role] = {"alknet-idle": role_alknet_idle}


# ============================================================================================ the parent


def run_memory(lab: B.Lab, carrier: str, codec: str, sessions: int) -> float:
    """KiB of server RSS per idle connection (fresh server)."""
    server, info = call_protocol.start_server(lab)
    try:
        port = info["ssh_port"] if carrier == "ssh" else info["raw_port"]
        idle = lab.role(
            "alknet-idle",
            "--carrier",
            carrier,
            "--codec",
            codec,
            "--port",
            str(port),
            "--identity",
            str(lab.identity),
            "--host-key-fp",
            info["host_key"],
            "--warm",
            "5",
            "--count",
            str(sessions),
            stdin=True,
        )
        try:
            B.read_json(idle, 60)
            time.sleep(1.0)
            before = rss_kib(server.pid)
            assert idle.proc.stdin is not None
            idle.proc.stdin.write(b"go\n")
            idle.proc.stdin.flush()
            opened = B.read_json(idle, 60 + sessions * 0.2)["opened"]
            if opened != 5 + sessions:
                raise RuntimeError(f"only {opened} idle connections opened")
            time.sleep(1.0)
            after = rss_kib(server.pid)
        finally:
            lab.stop(idle, timeout=30)
        return (after - before) / sessions
    finally:
        lab.stop(server, timeout=10)


def memory_phase(lab: B.Lab, args: argparse.Namespace) -> dict[str, list[float]]:
    """``--mem-rounds`` rounds of every kind: ``{"ssh json": [KiB, ...], ...}``."""
    kinds = [k.strip() for k in args.kinds.split(",")]
    memory: dict[str, list[float]] = {}
    for kind in (k for k in B.MEMORY_KINDS if k in kinds):
        carrier, codec = kind.split()
        for rnd in range(args.mem_rounds):
            R.progress(f"memory {kind} round {rnd + 1}/{args.mem_rounds}: {args.sessions} idle connections")
            memory.setdefault(kind, []).append(run_memory(lab, carrier, codec, args.sessions))
            R.progress(f"  {R.fmt(memory[kind][-1], 1)} KiB per connection")
    return memory


def main(argv: list[str] | None = None) -> int:
    return B.standalone(argv, __doc__, [], ROLES, memory_phase)


if __name__ == "__main__":
    B.cli(main)
