"""Shared code of the call-protocol bench (issue 4, ``call-protocol.md`` §12).

The scripts ``call_protocol.py`` (alknet rows), ``nats_baseline.py``, ``grpc_baseline.py`` and ``idle_memory.py``
each define their child roles and a :class:`Part` (how to start their servers and the client of each row);
``run_all.py`` runs all of them in one run. This module holds what they share:

- the child side: the echo payload and schema, JSON lines to the parent, running until stdin closes, and
  :func:`measure` (warm-up, sequential round trips, then concurrent callers for a fixed time);
- the parent side: :class:`Lab` (keys, temporary directory, child processes that are always stopped), the
  rounds loop :func:`run` (rows interleaved, order rotated each round), the flags, ``main`` of a row script.

``_callreport.py`` has the medians, the row table, the machine and the versions.

Children run in their own process group each, get ``PR_SET_PDEATHSIG`` and are stopped on exit, on errors, on
Ctrl-C, SIGTERM and SIGHUP (by their pid or process group id, never by name).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C
from _callreport import fmt, progress, row_table, run_meta, write_json

HERE = Path(__file__).resolve().parent
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
MEMORY_KINDS = ("ssh json", "ssh msgpack", "raw json")  # carrier and codec of the idle connections
# which script runs each child role (``python bench/<script> --role <role> ...``)
ROLE_SCRIPTS = {
    "alknet-server": "call_protocol.py",
    "alknet-client": "call_protocol.py",
    "alknet-idle": "idle_memory.py",
    "nats-responder": "nats_baseline.py",
    "nats-client": "nats_baseline.py",
    "grpc-server": "grpc_baseline.py",
    "grpc-client": "grpc_baseline.py",
}
Role = Callable[[argparse.Namespace], Coroutine[Any, Any, None]]


# ============================================================================================ child side


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout: how children talk to the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def until_stdin_eof_or_signal() -> None:
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


async def measure(call_once: Callable[[], Awaitable[Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then sequential round trips, then ``--callers`` concurrent callers for ``--seconds``."""
    server_pids = [int(p) for p in args.server_pids.split(",") if p] if args.server_pids else []
    for _ in range(args.warmup):
        await call_once()
    lat: list[float] = []
    perf = time.perf_counter
    seq_cpu0, seq_server0 = time.process_time(), _proc_cpu_ticks(server_pids)
    for _ in range(args.sequential):
        t0 = perf()
        await call_once()
        lat.append(perf() - t0)
    seq_client_cpu = time.process_time() - seq_cpu0
    seq_server_cpu = (_proc_cpu_ticks(server_pids) - seq_server0) / CLK_TCK
    lat.sort()
    loop = asyncio.get_running_loop()
    count = 0
    errors = 0
    stop_at = loop.time() + args.seconds

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
    await asyncio.gather(*(worker() for _ in range(args.callers)))
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


def run_role(args: argparse.Namespace, roles: dict[str, Role]) -> int:
    import logging

    C.raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    coro = roles[args.role](args)
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


# ============================================================================================ parent side


def tail(child: C.Child) -> str:
    return child.log_text()[-3000:]


@dataclass
class Lab:
    """The run's temporary directory, keys and child processes (each in its own process group)."""

    tmp: Path
    profile: str | None = None
    children: list[C.Child] = field(default_factory=list)
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

    def spawn(self, name: str, argv: Sequence[str], *, stdin: bool = False) -> C.Child:
        log = self.tmp / f"{name}.{len(self.children)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=C._die_with_parent,
                cwd=HERE.parent,
            )
        child = C.Child(name, proc, log)
        self.children.append(child)
        return child

    def role(self, role: str, *extra: str, stdin: bool = False) -> C.Child:
        argv = [sys.executable, str(HERE / ROLE_SCRIPTS[role]), "--role", role, *extra]
        if self.profile:
            argv += ["--profile", self.profile]
        return self.spawn(role, argv, stdin=stdin)

    def stop(self, child: C.Child, timeout: float = 5.0) -> None:
        """Close its stdin (servers exit), then SIGTERM and SIGKILL its process group if it lingers."""
        proc = child.proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            C._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                C._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        C._signal_group(proc.pid, signal.SIGKILL)  # anything the child left in its group
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child, timeout=2.0)


def read_json(child: C.Child, timeout: float) -> dict[str, Any]:
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
                raise TimeoutError(f"{child.name}: no answer within {timeout:g} s\n{tail(child)}")
            if not sel.select(left):
                continue
            chunk = os.read(child.proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"{child.name} exited ({child.proc.wait()}):\n{tail(child)}")
            buf += chunk
            if chunk == b"\n":
                line = buf.strip()
                buf = b""
                if line.startswith(b"{"):
                    result: dict[str, Any] = json.loads(line)
                    return result
    finally:
        sel.close()


@dataclass
class Part:
    """One script's rows: ``start`` launches its servers once per run and returns their state; ``client`` gives
    ``(role, args, server pids)`` of the client process for a row; ``missing`` says why the part cannot run
    (``None``: it can)."""

    rows: tuple[str, ...]
    start: Callable[[Lab, argparse.Namespace], Any]
    client: Callable[[str, Any, Lab], tuple[str, list[str], list[int]]]
    missing: Callable[[argparse.Namespace], str | None] = lambda args: None


MemoryPhase = Callable[[Lab, argparse.Namespace], dict[str, list[float]]]


def run_row(
    lab: Lab, role: str, extra: list[str], pids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    extra = [
        *extra,
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


_STOP: list[Lab] = []


def _on_signal(signum: int, frame: object) -> None:
    for lab in _STOP:
        lab.stop_all()
    raise SystemExit(128 + signum)


def run(
    args: argparse.Namespace, parts: Sequence[Part], memory_phase: MemoryPhase | None = None
) -> dict[str, Any]:
    """Start the parts' servers, run ``--rounds`` rounds of every selected row (interleaved, the order rotated
    each round), stop everything, then run the memory phase. Returns ``{"meta", "samples", "memory"}``."""
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    known = [r for part in parts for r in part.rows]
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (known: {', '.join(known)})")
    rows = [r for r in ROWS if r in rows]  # the fixed order of the table
    active: list[Part] = []
    for part in parts:
        if not any(r in rows for r in part.rows):
            continue
        reason = part.missing(args)
        if reason is not None:
            progress(reason)
            rows = [r for r in rows if r not in part.rows]
        else:
            active.append(part)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    C.raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (&)
    tmp = Path(tempfile.mkdtemp(prefix="alknet-bench-call-"))
    started = time.time()
    load_start = os.getloadavg()[0]
    samples: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    memory: dict[str, list[float]] = {}
    lab: Lab | None = None
    try:
        lab = Lab(tmp, args.profile)
        _STOP.append(lab)
        states: dict[str, tuple[Part, Any]] = {}
        for part in active:
            state = part.start(lab, args)
            states.update((row, (part, state)) for row in part.rows)
        for rnd in range(args.rounds if rows else 0):
            order = rows[rnd % len(rows) :] + rows[: rnd % len(rows)]
            for row in order:
                progress(f"round {rnd + 1}/{args.rounds}: {row}")
                part, state = states[row]
                result = run_row(lab, *part.client(row, state, lab), args)
                samples[row].append(result)
                progress(
                    f"  p50 {fmt(result['p50_ms'], 3)} ms, p99 {fmt(result['p99_ms'], 3)} ms, "
                    f"{fmt(result['calls_per_s'], 0)} calls/s"
                )
        lab.stop_all()
        if memory_phase is not None and not args.no_memory:
            memory = memory_phase(lab, args)
    finally:
        if lab is not None:
            lab.stop_all()
            _STOP.remove(lab)
        if args.keep:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = run_meta(args, rows, started, load_start)
    return {"meta": meta, "samples": samples, "memory": memory}


# -------------------------------------------------------------------------------------------- flags

FULL: dict[str, Any] = {"rounds": 3, "warmup": 500, "sequential": 5000, "callers": 256, "seconds": 10.0}
FULL_MEMORY: dict[str, Any] = {"sessions": 1000}
QUICK: dict[str, Any] = {"rounds": 1, "warmup": 50, "sequential": 200, "callers": 32, "seconds": 1.0}
QUICK_MEMORY: dict[str, Any] = {"sessions": 20}


def parse_args(
    argv: Sequence[str] | None,
    doc: str | None,
    *,
    rows: Sequence[str],
    memory: bool = False,
    results: bool = False,
    roles: Sequence[str] = (),
) -> argparse.Namespace:
    """The flags of a script that runs ``rows`` (and the memory phase when ``memory``); ``results``: the script
    writes the results file (``run_all.py``). Flags that do not apply to a script are absent from it."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run whose numbers mean nothing")
    if rows:
        p.add_argument("--rounds", type=int, help="rounds of every row (default 3; --quick 1)")
        p.add_argument("--warmup", type=int, help="warm-up calls per row and round (default 500; --quick 50)")
        p.add_argument(
            "--sequential", type=int, help="sequential calls per row and round (default 5000; --quick 200)"
        )
        p.add_argument(
            "--callers", type=int, help="concurrent callers of the pipelined phase (default 256; --quick 32)"
        )
        p.add_argument(
            "--seconds", type=float, help="pipelined phase per row and round (default 10; --quick 1)"
        )
        p.add_argument("--rows", default=",".join(rows), help="comma-separated subset of: " + ", ".join(rows))
    if memory:
        p.add_argument(
            "--sessions", type=int, help="idle connections for the memory phase (default 1000; --quick 20)"
        )
        p.add_argument("--mem-rounds", type=int, default=1, help="rounds of the memory phase (default 1)")
        p.add_argument(
            "--kinds",
            default=",".join(MEMORY_KINDS),
            help="connections of the memory phase, comma-separated subset of: " + ", ".join(MEMORY_KINDS),
        )
        if rows:
            p.add_argument("--no-memory", action="store_true", help="skip the memory phase")
    if "nats" in rows:
        p.add_argument(
            "--nats-server", metavar="PATH", help="the nats-server binary (default: PATH, /usr/sbin)"
        )
    p.add_argument("--json", metavar="PATH", help="also write every sample (and ratio) as JSON")
    if results:
        p.add_argument(
            "--results-dir",
            metavar="DIR",
            default=str(HERE / "results"),
            help="where the results file <UTC date>-<hostname>.json goes (default bench/results)",
        )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (child logs)")
    p.add_argument(
        "--profile", metavar="DIR", help="run every child (alknet/nats/grpc) under cProfile into DIR"
    )
    if any(r.startswith("alknet") for r in rows) or "alknet-server" in roles:
        p.add_argument(
            "--no-schema",
            action="store_true",
            help="diagnostic: serve /bench/echo without its input schema (not the method of spec section 12)",
        )
    if roles:  # child roles (internal)
        p.add_argument("--role", choices=sorted(roles), help=argparse.SUPPRESS)
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
    absent: dict[str, Any] = {
        "role": None,
        "rows": "",
        "no_schema": False,
        "nats_server": None,
        "no_memory": not memory,
    }
    absent |= {"rounds": 0, "warmup": 0, "sequential": 0, "callers": 0, "seconds": 0.0}
    absent |= {"sessions": 0, "mem_rounds": 0, "kinds": "", "results_dir": None}
    for name, value in absent.items():  # flags this script does not have
        if not hasattr(args, name):
            setattr(args, name, value)
    unknown = [k for k in args.kinds.split(",") if k.strip() and k.strip() not in MEMORY_KINDS]
    if unknown:
        p.error(f"unknown --kinds: {', '.join(unknown)} (known: {', '.join(MEMORY_KINDS)})")
    defaults = {**(QUICK if args.quick else FULL)} if rows else {}
    if memory:
        defaults.update(QUICK_MEMORY if args.quick else FULL_MEMORY)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def standalone(
    argv: Sequence[str] | None,
    doc: str | None,
    parts: Sequence[Part],
    roles: dict[str, Role],
    memory_phase: MemoryPhase | None = None,
) -> int:
    """``main`` of a row script run on its own: its rows (or memory phase) only, the table, ``--json``."""
    rows = [r for part in parts for r in part.rows]
    args = parse_args(argv, doc, rows=rows, memory=memory_phase is not None, roles=list(roles))
    if args.role is not None:
        return run_role(args, roles)
    result = run(args, parts, memory_phase)
    print("\n".join(row_table(result, rows)))
    print(f"\ntotal {result['meta']['duration_s']:.0f} s")
    if args.json:
        write_json(args.json, result)
    return 0


def cli(main: Callable[[], int]) -> None:
    """Run a script's ``main``: exit with its status; Ctrl-C exits 130 (every child has been stopped)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted; every started process was stopped")
        sys.exit(130)
