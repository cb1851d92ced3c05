"""Reporting helpers of the call-protocol bench: medians, the row table, the machine and the versions.

Used by ``_callbench.py`` (the rounds loop and the row scripts' output) and ``run_all.py`` (the requirement
verdicts and the results file).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def find_nats_server(given: str | None) -> str | None:
    """The ``nats-server`` binary: ``given``, else on ``PATH`` or in ``/usr/sbin``; ``None`` when missing."""
    candidates = [given] if given is not None else [shutil.which("nats-server"), "/usr/sbin/nats-server"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


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


def run_meta(args: argparse.Namespace, rows: list[str], started: float, load_start: float) -> dict[str, Any]:
    """The machine, the versions and the run's parameters."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": _dist("asyncssh"),
        "nats_server": _nats_version(find_nats_server(args.nats_server)),
        "nats_py": _dist("nats-py"),
        "grpcio": _dist("grpcio"),
        "msgpack": _dist("msgpack"),
        "script": Path(sys.argv[0]).name,
        "rows": rows,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "sequential": args.sequential,
        "callers": args.callers,
        "seconds": args.seconds,
        "sessions": 0 if args.no_memory else args.sessions,
        "mem_rounds": 0 if args.no_memory else args.mem_rounds,
        "quick": args.quick,
        "no_schema": args.no_schema,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "duration_s": round(time.time() - started, 1),
    }


ROW_KEYS = (
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


def medians(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per row: the median over rounds of every :data:`ROW_KEYS` figure, and the min/max calls/s."""
    rows: dict[str, dict[str, float | None]] = {}
    for row, results in samples.items():
        rows[row] = {key: med([r.get(key) for r in results]) for key in ROW_KEYS}
        cps = [r["calls_per_s"] for r in results if r.get("calls_per_s")]
        rows[row]["min_cps"] = min(cps, default=None)
        rows[row]["max_cps"] = max(cps, default=None)
    return rows


def row_table(result: dict[str, Any], shown: Sequence[str]) -> list[str]:
    """The machine line, then the Markdown table of the ``shown`` rows (a row not run says so) and the memory
    lines."""
    meta, memory = result["meta"], result["memory"]
    out = [
        f"machine: {meta['cpu']} x{meta['cpus']}, Python {meta['python']}, asyncssh {meta['asyncssh']}, "
        f"nats-server {meta['nats_server']}, nats-py {meta['nats_py']}, grpcio {meta['grpcio']}, "
        f"msgpack {meta['msgpack']}; 1-minute load {meta['load_start']:.2f} at the start, "
        f"{meta['load_end']:.2f} at the end"
    ]
    if shown:
        rows = medians(result["samples"])
        out += [
            f"rounds: {meta['rounds']}; per round: {meta['warmup']} warm-up, {meta['sequential']} sequential, "
            f"{meta['callers']} callers x {meta['seconds']:g} s"
            + ("; DIAGNOSTIC: /bench/echo without its input schema" if meta["no_schema"] else ""),
            "",
            "| row | seq p50 ms | seq p99 ms | seq CPU us/call client + server | pipelined calls/s (median) "
            "| min-max calls/s | pipelined CPU us/call client + server | busy % machine (this row) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in shown:
            if row not in rows:
                out.append(f"| {row} | skipped | | | | | | |")
                continue
            r = rows[row]
            out.append(
                f"| {row} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} "
                f"| {fmt(r['seq_client_cpu_us_per_call'], 0)} + {fmt(r['seq_server_cpu_us_per_call'], 0)} "
                f"| {fmt(r['calls_per_s'], 0)} | {fmt(r['min_cps'], 0)}-{fmt(r['max_cps'], 0)} "
                f"| {fmt(r['client_cpu_us_per_call'], 0)} + {fmt(r['server_cpu_us_per_call'], 0)} "
                f"| {fmt(r['machine_busy_pct'], 0)} ({fmt(r['bench_busy_pct'], 0)}) |"
            )
    if memory:
        out.append("")
    for kind, values in memory.items():
        out.append(
            f"memory per idle {kind} connection (server RSS): {fmt(med(values), 1)} KiB "
            f"(rounds: {', '.join(fmt(v, 1) for v in values)})"
        )
    return out


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
