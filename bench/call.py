#!/usr/bin/env python3
"""Call-protocol benchmark (issue 4, ``call-protocol.md`` §12): alknet calls next to NATS and gRPC, one run.

Everything runs on 127.0.0.1 in separate processes started (and always stopped) by this script:

- **alknet**: a server process (``SshServer`` with ``node.serve_channel`` installed as the ``alknet-control``
  handler, plus a ``RawListener`` on the same ``Node``) serving ``/bench/echo``, a query with a validated
  three-property input schema that returns its input; a client process per measurement, over the SSH control
  channel (``alknet-control:0`` JSON, ``:1`` msgpack; ``aes128-gcm@openssh.com``) and, as a reference row, over
  raw framing on tcp (``auth.token``);
- **NATS**: Debian's ``nats-server`` (started here on a free loopback port), a nats-py responder process and a
  nats-py client process doing request/reply; skipped with a message when ``nats-server`` is not installed;
- **gRPC**: a ``grpc.aio`` server process with a generic unary handler (no protoc step) and a ``grpc.aio`` client
  process on an insecure loopback channel.

NATS and gRPC echo the same JSON bytes ``{"path":"/srv/example.txt","offset":0,"length":4096}``.

Per row and round: 500 warm-up calls, 5,000 sequential calls (p50/p99 of the round trip), then 256 concurrent
callers for 10 s (calls/s). Rows run interleaved, in an order rotated each round; the table shows medians over
rounds. Memory: a fresh alknet server, 5 warm-up connections, then 1,000 idle connections each with one control
channel and a ``CallPeer`` (one call each, then idle); server RSS growth / 1,000.

    uv run python bench/call.py            # full run (about 5 minutes on 2 cores)
    uv run python bench/call.py --quick    # smoke run (about 30 s; the numbers mean nothing)
    uv run python bench/call.py --json results.json

``ratio`` lines compare against the targets of issue 4 (calls/s >= 1.0x NATS, p50 <= 1.0x gRPC) and against the
requirement cells of ``call-protocol.md`` §12; ``MEETS``/``MISSES`` is only a reading of that run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import importlib.metadata
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PAYLOAD: dict[str, Any] = {"path": "/srv/example.txt", "offset": 0, "length": 4096}
PAYLOAD_JSON = json.dumps(PAYLOAD, separators=(",", ":")).encode()
OP = "/bench/echo"
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0},
        "length": {"type": "integer", "minimum": 0},
    },
    "required": ["path", "offset", "length"],
    "additionalProperties": False,
}
NATS_SUBJECT = "bench.echo"
GRPC_METHOD = "/bench.Echo/Echo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROWS = ("alknet ssh json", "alknet ssh msgpack", "alknet raw json", "alknet raw msgpack", "nats", "grpc")


# ============================================================================================ child roles


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout: how children talk to the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _until_stdin_eof_or_signal() -> None:
    """Servers run until the parent closes their stdin (or sends SIGTERM)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    eof = loop.run_in_executor(None, sys.stdin.buffer.read)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({eof, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _machine_ticks() -> tuple[int, int]:
    """``(busy, total)`` clock ticks of the whole machine since boot (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _proc_cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of ``pids`` (clock ticks); a vanished pid counts 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


async def _measure(
    call_once: Callable[[], Awaitable[Any]],
    *,
    warmup: int,
    sequential: int,
    callers: int,
    seconds: float,
    server_pids: Sequence[int],
) -> dict[str, Any]:
    """Warm-up, then sequential round trips, then ``callers`` concurrent callers for ``seconds``."""
    for _ in range(warmup):
        await call_once()
    lat: list[float] = []
    perf = time.perf_counter
    seq_cpu0, seq_server0 = time.process_time(), _proc_cpu_ticks(server_pids)
    for _ in range(sequential):
        t0 = perf()
        await call_once()
        lat.append(perf() - t0)
    seq_client_cpu = time.process_time() - seq_cpu0
    seq_server_cpu = (_proc_cpu_ticks(server_pids) - seq_server0) / CLK_TCK
    lat.sort()
    loop = asyncio.get_running_loop()
    count = 0
    errors = 0
    stop_at = loop.time() + seconds

    async def worker() -> None:
        nonlocal count, errors
        while loop.time() < stop_at:
            try:
                await call_once()
            except Exception:
                errors += 1
                if errors > 100:
                    raise
            else:
                count += 1

    busy0, total0 = _machine_ticks()
    cpu0, server0, t0 = time.process_time(), _proc_cpu_ticks(server_pids), perf()
    await asyncio.gather(*(worker() for _ in range(callers)))
    elapsed = perf() - t0
    client_cpu = time.process_time() - cpu0
    server_cpu = (_proc_cpu_ticks(server_pids) - server0) / CLK_TCK
    busy1, total1 = _machine_ticks()
    cpus = os.cpu_count() or 1
    machine = (busy1 - busy0) / (total1 - total0) if total1 > total0 else None
    ours = (client_cpu + server_cpu) / (elapsed * cpus) if elapsed > 0 else None
    n = len(lat)
    return {
        "p50_ms": statistics.median(lat) * 1000 if lat else None,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if lat else None,
        "mean_ms": statistics.fmean(lat) * 1000 if lat else None,
        "calls": count,
        "errors": errors,
        "elapsed": elapsed,
        "calls_per_s": count / elapsed if elapsed > 0 else None,
        "seq_client_cpu_us_per_call": seq_client_cpu / n * 1e6 if n else None,
        "seq_server_cpu_us_per_call": seq_server_cpu / n * 1e6 if n and server_pids else None,
        "client_cpu_us_per_call": client_cpu / count * 1e6 if count else None,
        "machine_busy_pct": machine * 100 if machine is not None else None,
        "bench_busy_pct": ours * 100 if ours is not None else None,
        "server_cpu_us_per_call": server_cpu / count * 1e6 if count and server_pids else None,
    }


def _bench_node(schema: bool = True) -> Any:
    from alknet.core.call import OperationContext, OperationRegistry, OperationSpec, OperationType
    from alknet.core.node import Node

    registry = OperationRegistry()

    async def echo(input: Any, ctx: OperationContext) -> Any:
        return input

    spec = OperationSpec(OP, "bench", OperationType.QUERY, input_schema=INPUT_SCHEMA if schema else {})
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
    _emit({"ssh_port": ssh_port, "raw_port": raw.ports[0], "host_key": server.host_key_fingerprint})
    try:
        await _until_stdin_eof_or_signal()
    finally:
        await raw.close()
        await server.close(drain=0)
        await node.close()


async def _alknet_channel(args: argparse.Namespace) -> tuple[Any, Any]:
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
    peer, conn = await _alknet_channel(args)
    async with peer:
        out = await peer.call(OP, PAYLOAD, timeout=10)
        if out != PAYLOAD:
            raise SystemExit(f"echo returned {out!r}")

        async def once() -> Any:
            return await peer.call(OP, PAYLOAD, timeout=30)

        result = await _measure(once, **_measure_args(args))
    if conn is not None:
        await conn.aclose()
    _emit(result)


async def role_alknet_idle(args: argparse.Namespace) -> None:
    """Open ``--warm`` connections, report, wait for a line on stdin, open ``--count`` more, report, then hold
    them until stdin closes."""
    held: list[tuple[Any, Any]] = []
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            peer, conn = await _alknet_channel(args)
            peer.start()
            await peer.call(OP, PAYLOAD, timeout=30)
            held.append((peer, conn))

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(one() for _ in range(args.warm)))
    _emit({"opened": len(held)})
    await loop.run_in_executor(None, sys.stdin.buffer.readline)
    await asyncio.gather(*(one() for _ in range(args.count)))
    _emit({"opened": len(held)})
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    for peer, conn in held:
        await peer.close()
        if conn is not None:
            conn.close()


async def role_nats_responder(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{args.port}", allow_reconnect=False)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(NATS_SUBJECT, cb=echo)
    await nc.flush()
    _emit({"ready": True})
    try:
        await _until_stdin_eof_or_signal()
    finally:
        await nc.close()


async def role_nats_client(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{args.port}", allow_reconnect=False)
    reply = await nc.request(NATS_SUBJECT, PAYLOAD_JSON, timeout=10)
    if reply.data != PAYLOAD_JSON:
        raise SystemExit(f"nats echo returned {reply.data!r}")

    async def once() -> Any:
        return await nc.request(NATS_SUBJECT, PAYLOAD_JSON, timeout=30)

    result = await _measure(once, **_measure_args(args))
    await nc.close()
    _emit(result)


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
    _emit({"port": port})
    try:
        await _until_stdin_eof_or_signal()
    finally:
        await server.stop(0)


async def role_grpc_client(args: argparse.Namespace) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        stub = channel.unary_unary(GRPC_METHOD)
        reply = await stub(PAYLOAD_JSON, timeout=10)
        if reply != PAYLOAD_JSON:
            raise SystemExit(f"grpc echo returned {reply!r}")

        async def once() -> Any:
            return await stub(PAYLOAD_JSON, timeout=30)

        result = await _measure(once, **_measure_args(args))
    _emit(result)


def _measure_args(args: argparse.Namespace) -> dict[str, Any]:
    pids = [int(p) for p in args.server_pids.split(",") if p] if args.server_pids else []
    return {
        "warmup": args.warmup,
        "sequential": args.sequential,
        "callers": args.callers,
        "seconds": args.seconds,
        "server_pids": pids,
    }


ROLE_FUNCS: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "alknet-server": role_alknet_server,
    "alknet-client": role_alknet_client,
    "alknet-idle": role_alknet_idle,
    "nats-responder": role_nats_responder,
    "nats-client": role_nats_client,
    "grpc-server": role_grpc_server,
    "grpc-client": role_grpc_client,
}


def run_role(args: argparse.Namespace) -> int:
    _raise_fd_limit()
    logging_off()
    coro = ROLE_FUNCS[args.role](args)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        try:
            asyncio.run(coro)
        finally:
            prof.disable()
            prof.dump_stats(os.path.join(args.profile, f"{args.role}-{os.getpid()}.prof"))
    else:
        asyncio.run(coro)
    return 0


def logging_off() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


# ============================================================================================ the parent


_LIBC: Any
try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _die_with_parent() -> None:  # between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@dataclass
class Lab:
    """The run's temporary directory, keys and child processes (each in its own process group)."""

    tmp: Path
    profile: str | None = None
    children: list[Child] = field(default_factory=list)
    identity: Path = field(init=False)
    host_key: Path = field(init=False)
    authorized_keys: Path = field(init=False)

    def __post_init__(self) -> None:
        from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of

        user = generate_private_key()
        host = generate_private_key()
        self.identity = self.tmp / "id_ed25519"
        self.identity.write_bytes(private_key_to_openssh(user, "bench"))
        self.identity.chmod(0o600)
        self.host_key = self.tmp / "host_key"
        self.host_key.write_bytes(private_key_to_openssh(host, "bench-host"))
        self.host_key.chmod(0o600)
        self.authorized_keys = self.tmp / "authorized_keys"
        self.authorized_keys.write_text(f'alknet-scopes="/bench/*" {public_key_of(user).line}\n')

    def spawn(self, name: str, argv: Sequence[str], *, stdin: bool = False) -> Child:
        log = self.tmp / f"{name}.{len(self.children)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                cwd=HERE.parent.parent,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def role(self, role: str, *extra: str, stdin: bool = False) -> Child:
        argv = [sys.executable, str(HERE), "--role", role, *extra]
        if self.profile:
            argv += ["--profile", self.profile]
        return self.spawn(role, argv, stdin=stdin)

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        proc = child.proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _killpg(proc.pid, signal.SIGKILL)  # anything the child left in its group
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child, timeout=2.0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_json(child: Child, timeout: float) -> dict[str, Any]:
    """The next JSON line the child prints, within ``timeout``."""
    assert child.proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(child.proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{child.name}: no answer within {timeout:g} s\n{child.log_tail()}")
            if not sel.select(left):
                continue
            chunk = os.read(child.proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"{child.name} exited ({child.proc.wait()}):\n{child.log_tail()}")
            buf += chunk
            if chunk == b"\n":
                line = buf.strip()
                buf = b""
                if line.startswith(b"{"):
                    result: dict[str, Any] = json.loads(line)
                    return result
    finally:
        sel.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, child: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: port {port} never accepted within {timeout:g} s")


# -------------------------------------------------------------------------------------------- servers


@dataclass
class Servers:
    alknet: Child
    ssh_port: int
    raw_port: int
    host_key_fp: str
    grpc: Child
    grpc_port: int
    nats: Child | None = None
    nats_responder: Child | None = None
    nats_port: int = 0


def start_servers(lab: Lab, nats_server: str | None, args: argparse.Namespace) -> Servers:
    alknet = lab.role(
        "alknet-server",
        "--host-key",
        str(lab.host_key),
        "--authorized-keys",
        str(lab.authorized_keys),
        *(["--no-schema"] if args.no_schema else []),
        stdin=True,
    )
    info = read_json(alknet, 30)
    grpc = lab.role("grpc-server", stdin=True)
    grpc_port = int(read_json(grpc, 30)["port"])
    servers = Servers(alknet, info["ssh_port"], info["raw_port"], info["host_key"], grpc, grpc_port)
    if nats_server is not None:
        port = free_port()
        servers.nats = lab.spawn("nats-server", [nats_server, "-a", "127.0.0.1", "-p", str(port)])
        wait_port(port, 15, servers.nats)
        servers.nats_port = port
        servers.nats_responder = lab.role("nats-responder", "--port", str(port), stdin=True)
        read_json(servers.nats_responder, 30)
    return servers


def client_argv(row: str, servers: Servers, lab: Lab) -> tuple[str, list[str], list[int]]:
    """``(role, args, server pids)`` of the client for ``row``."""
    if row.startswith("alknet"):
        _, carrier, codec = row.split()
        port = servers.ssh_port if carrier == "ssh" else servers.raw_port
        args = ["--carrier", carrier, "--codec", codec, "--port", str(port), "--identity", str(lab.identity)]
        args += ["--host-key-fp", servers.host_key_fp]
        return "alknet-client", args, [servers.alknet.pid]
    if row == "nats":
        assert servers.nats is not None and servers.nats_responder is not None
        return (
            "nats-client",
            ["--port", str(servers.nats_port)],
            [servers.nats.pid, servers.nats_responder.pid],
        )
    return "grpc-client", ["--port", str(servers.grpc_port)], [servers.grpc.pid]


def run_row(lab: Lab, servers: Servers, row: str, args: argparse.Namespace) -> dict[str, Any]:
    role, extra, pids = client_argv(row, servers, lab)
    extra += [
        "--warmup",
        str(args.warmup),
        "--sequential",
        str(args.sequential),
        "--callers",
        str(args.callers),
        "--seconds",
        str(args.seconds),
        "--server-pids",
        ",".join(str(p) for p in pids),
    ]
    child = lab.role(role, *extra)
    budget = 60 + args.seconds + (args.warmup + args.sequential) * 0.02
    try:
        return read_json(child, budget)
    finally:
        lab.stop(child, timeout=10)


def run_memory(lab: Lab, carrier: str, args: argparse.Namespace) -> float:
    """KiB of server RSS per idle connection (fresh server)."""
    server = lab.role(
        "alknet-server",
        "--host-key",
        str(lab.host_key),
        "--authorized-keys",
        str(lab.authorized_keys),
        stdin=True,
    )
    try:
        info = read_json(server, 30)
        port = info["ssh_port"] if carrier == "ssh" else info["raw_port"]
        idle = lab.role(
            "alknet-idle",
            "--carrier",
            carrier,
            "--codec",
            "json",
            "--port",
            str(port),
            "--identity",
            str(lab.identity),
            "--host-key-fp",
            info["host_key"],
            "--warm",
            "5",
            "--count",
            str(args.sessions),
            stdin=True,
        )
        try:
            read_json(idle, 60)
            time.sleep(1.0)
            before = rss_kib(server.pid)
            assert idle.proc.stdin is not None
            idle.proc.stdin.write(b"go\n")
            idle.proc.stdin.flush()
            opened = read_json(idle, 60 + args.sessions * 0.2)["opened"]
            if opened != 5 + args.sessions:
                raise RuntimeError(f"only {opened} idle connections opened")
            time.sleep(1.0)
            after = rss_kib(server.pid)
        finally:
            lab.stop(idle, timeout=30)
        return (after - before) / args.sessions
    finally:
        lab.stop(server, timeout=10)


# -------------------------------------------------------------------------------------------- report


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "n/a"


def _nats_version(binary: str | None) -> str:
    if binary is None:
        return "not installed"
    with contextlib.suppress(Exception):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.strip().split()[-1]
    return "n/a"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "n/a"


def report(
    samples: dict[str, list[dict[str, Any]]], memory: dict[str, list[float]], meta: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    rows: dict[str, dict[str, float | None]] = {}
    for row, results in samples.items():
        rows[row] = {
            key: _med([r.get(key) for r in results])
            for key in (
                "p50_ms",
                "p99_ms",
                "seq_client_cpu_us_per_call",
                "seq_server_cpu_us_per_call",
                "calls_per_s",
                "client_cpu_us_per_call",
                "server_cpu_us_per_call",
                "machine_busy_pct",
                "bench_busy_pct",
            )
        }
        rows[row]["min_cps"] = min((r["calls_per_s"] for r in results if r.get("calls_per_s")), default=None)
        rows[row]["max_cps"] = max((r["calls_per_s"] for r in results if r.get("calls_per_s")), default=None)
    out = [
        f"machine: {meta['cpu']} x{meta['cpus']}, Python {meta['python']}, asyncssh {meta['asyncssh']}, "
        f"nats-server {meta['nats_server']}, nats-py {meta['nats_py']}, grpcio {meta['grpcio']}, "
        f"msgpack {meta['msgpack']}; 1-minute load {meta['load_start']:.2f} at the start, "
        f"{meta['load_end']:.2f} at the end",
        f"rounds: {meta['rounds']}; per round: {meta['warmup']} warm-up, {meta['sequential']} sequential, "
        f"{meta['callers']} callers x {meta['seconds']:g} s"
        + ("; DIAGNOSTIC: /bench/echo without its input schema" if meta["no_schema"] else ""),
        "",
        "| row | seq p50 ms | seq p99 ms | seq CPU us/call client + server | pipelined calls/s (median) "
        "| min-max calls/s | pipelined CPU us/call client + server | busy % machine (this row) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        if row not in rows:
            out.append(f"| {row} | skipped | | | | | | |")
            continue
        r = rows[row]
        out.append(
            f"| {row} | {_fmt(r['p50_ms'], 3)} | {_fmt(r['p99_ms'], 3)} "
            f"| {_fmt(r['seq_client_cpu_us_per_call'], 0)} + {_fmt(r['seq_server_cpu_us_per_call'], 0)} "
            f"| {_fmt(r['calls_per_s'], 0)} | {_fmt(r['min_cps'], 0)}-{_fmt(r['max_cps'], 0)} "
            f"| {_fmt(r['client_cpu_us_per_call'], 0)} + {_fmt(r['server_cpu_us_per_call'], 0)} "
            f"| {_fmt(r['machine_busy_pct'], 0)} ({_fmt(r['bench_busy_pct'], 0)}) |"
        )
    out.append("")
    for carrier, values in memory.items():
        out.append(
            f"memory per idle {carrier} connection (server RSS): {_fmt(_med(values), 1)} KiB "
            f"(rounds: {', '.join(_fmt(v, 1) for v in values)})"
        )
    out.append("")

    def get(row: str, key: str) -> float | None:
        return rows.get(row, {}).get(key)

    ratios: list[dict[str, Any]] = []

    def add(
        source: str, what: str, value: float | None, target: float, higher: bool, unit: str = "x"
    ) -> None:
        verdict = (
            "n/a"
            if value is None
            else ("MEETS" if (value >= target) == higher or value == target else "MISSES")
        )
        ratios.append(
            {
                "source": source,
                "what": what,
                "value": value,
                "target": target,
                "higher": higher,
                "verdict": verdict,
                "unit": unit,
            }
        )

    for codec in ("json", "msgpack"):
        ssh = f"alknet ssh {codec}"
        add(
            "issue 4",
            f"calls/s {ssh} / nats",
            _ratio(get(ssh, "calls_per_s"), get("nats", "calls_per_s")),
            1.0,
            True,
        )
        add("issue 4", f"p50 {ssh} / grpc", _ratio(get(ssh, "p50_ms"), get("grpc", "p50_ms")), 1.0, False)
    for codec in ("json", "msgpack"):
        ssh = f"alknet ssh {codec}"
        add("spec 12", f"p50 {ssh} (ms)", get(ssh, "p50_ms"), 1.0, False, "ms")
        add("spec 12", f"p50 {ssh} / nats", _ratio(get(ssh, "p50_ms"), get("nats", "p50_ms")), 1.5, False)
        add("spec 12", f"p50 {ssh} / grpc", _ratio(get(ssh, "p50_ms"), get("grpc", "p50_ms")), 1.2, False)
        add(
            "spec 12",
            f"calls/s {ssh} / nats",
            _ratio(get(ssh, "calls_per_s"), get("nats", "calls_per_s")),
            0.6 if codec == "json" else 0.8,
            True,
        )
        add(
            "spec 12",
            f"calls/s {ssh} / grpc",
            _ratio(get(ssh, "calls_per_s"), get("grpc", "calls_per_s")),
            3.0,
            True,
        )
    add(
        "spec 12",
        "calls/s alknet ssh msgpack / json",
        _ratio(get("alknet ssh msgpack", "calls_per_s"), get("alknet ssh json", "calls_per_s")),
        1.1,
        True,
    )
    add("spec 12", "memory per idle ssh connection (KiB)", _med(memory.get("ssh", [])), 64.0, False, "KiB")
    width = max(len(f"{r['source']}: {r['what']}") for r in ratios)
    for r in ratios:
        label = f"{r['source']}: {r['what']}"
        sign = ">=" if r["higher"] else "<="
        out.append(
            f"ratio {label:<{width}}  {_fmt(r['value'], 2):>7}  target {sign} {r['target']:g}: {r['verdict']}"
        )
    return out, ratios


# ---------------------------------------------------------------------------------------------- main


FULL: dict[str, Any] = {
    "rounds": 3,
    "warmup": 500,
    "sequential": 5000,
    "callers": 256,
    "seconds": 10.0,
    "sessions": 1000,
}
QUICK: dict[str, Any] = {
    "rounds": 1,
    "warmup": 50,
    "sequential": 200,
    "callers": 32,
    "seconds": 1.0,
    "sessions": 20,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run whose numbers mean nothing")
    p.add_argument("--rounds", type=int, help="rounds of every row (default 3; --quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up calls per row and round (default 500; --quick 50)")
    p.add_argument(
        "--sequential", type=int, help="sequential calls per row and round (default 5000; --quick 200)"
    )
    p.add_argument(
        "--callers", type=int, help="concurrent callers of the pipelined phase (default 256; --quick 32)"
    )
    p.add_argument("--seconds", type=float, help="pipelined phase per row and round (default 10; --quick 1)")
    p.add_argument(
        "--sessions", type=int, help="idle connections for the memory phase (default 1000; --quick 20)"
    )
    p.add_argument("--mem-rounds", type=int, default=1)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    p.add_argument("--no-memory", action="store_true", help="skip the memory phase")
    p.add_argument("--nats-server", metavar="PATH", help="the nats-server binary (default: PATH, /usr/sbin)")
    p.add_argument("--json", metavar="PATH", help="also write every sample and ratio as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (child logs)")
    p.add_argument(
        "--profile", metavar="DIR", help="run every alknet/nats/grpc child under cProfile into DIR"
    )
    p.add_argument(
        "--no-schema",
        action="store_true",
        help="diagnostic: serve /bench/echo without its input schema (not the method of spec section 12)",
    )
    # child roles (internal)
    p.add_argument("--role", choices=sorted(ROLE_FUNCS), help=argparse.SUPPRESS)
    p.add_argument("--carrier", choices=("ssh", "raw"), default="ssh", help=argparse.SUPPRESS)
    p.add_argument("--codec", choices=("json", "msgpack"), default="json", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--identity", help=argparse.SUPPRESS)
    p.add_argument("--host-key", help=argparse.SUPPRESS)
    p.add_argument("--host-key-fp", help=argparse.SUPPRESS)
    p.add_argument("--authorized-keys", help=argparse.SUPPRESS)
    p.add_argument("--server-pids", default="", help=argparse.SUPPRESS)
    p.add_argument("--warm", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _find_nats_server(given: str | None) -> str | None:
    """The ``nats-server`` binary: ``given``, else on ``PATH`` or in ``/usr/sbin``; ``None`` when missing."""
    candidates = [given] if given is not None else [shutil.which("nats-server"), "/usr/sbin/nats-server"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


_STOP: list[Lab] = []


def _on_signal(signum: int, frame: object) -> None:
    for lab in _STOP:
        lab.stop_all()
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        return run_role(args)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)}")
    nats_server = _find_nats_server(args.nats_server)
    if nats_server is None and "nats" in rows:
        _progress("nats-server is not installed (Debian package nats-server): the NATS baseline is skipped")
        rows.remove("nats")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    _raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="alknet-bench-call-"))
    lab = Lab(tmp, args.profile)
    _STOP.append(lab)
    signal.signal(signal.SIGTERM, _on_signal)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    samples: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    memory: dict[str, list[float]] = {}
    try:
        servers = start_servers(lab, nats_server if "nats" in rows else None, args)
        for rnd in range(args.rounds):
            order = rows[rnd % len(rows) :] + rows[: rnd % len(rows)]
            for row in order:
                _progress(f"round {rnd + 1}/{args.rounds}: {row}")
                result = run_row(lab, servers, row, args)
                samples[row].append(result)
                _progress(
                    f"  p50 {_fmt(result['p50_ms'], 3)} ms, p99 {_fmt(result['p99_ms'], 3)} ms, "
                    f"{_fmt(result['calls_per_s'], 0)} calls/s"
                )
        lab.stop_all()
        if not args.no_memory:
            for carrier in ("ssh", "raw"):
                for rnd in range(args.mem_rounds):
                    _progress(
                        f"memory {carrier} round {rnd + 1}/{args.mem_rounds}: {args.sessions} idle connections"
                    )
                    memory.setdefault(carrier, []).append(run_memory(lab, carrier, args))
                    _progress(f"  {_fmt(memory[carrier][-1], 1)} KiB per connection")
    finally:
        lab.stop_all()
        if args.keep:
            _progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "asyncssh": _dist("asyncssh"),
        "nats_server": _nats_version(nats_server),
        "nats_py": _dist("nats-py"),
        "grpcio": _dist("grpcio"),
        "msgpack": _dist("msgpack"),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "sequential": args.sequential,
        "callers": args.callers,
        "seconds": args.seconds,
        "sessions": args.sessions,
        "quick": args.quick,
        "no_schema": args.no_schema,
        "hostname": socket.gethostname(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lines, ratios = report(samples, memory, meta)
    print("\n".join(lines))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"meta": meta, "samples": samples, "memory": memory, "ratios": ratios}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
