#!/usr/bin/env python3
"""Call-protocol bench (issue 4, ``call-protocol.md`` §12): alknet calls next to NATS and gRPC, in one run.

Runs, on 127.0.0.1, each side in its own process (started and always stopped here):

- ``call_protocol.py``'s rows: alknet over the SSH control channel (JSON, msgpack) and raw framing on tcp;
- ``nats_baseline.py``: nats-py request/reply via Debian's ``nats-server`` (skipped when it is missing);
- ``grpc_baseline.py``: grpcio ``grpc.aio`` unary calls on an insecure loopback channel;
- then ``idle_memory.py``: server RSS per idle connection.

Per row and round: 500 warm-up calls, 5,000 sequential calls (p50/p99), 256 concurrent callers for 10 s
(calls/s). 3 rounds, rows interleaved in an order rotated each round; medians over rounds.

    uv run python bench/run_all.py            # full run (about 6 minutes on 2 cores)
    uv run python bench/run_all.py --quick    # smoke run (about 30 s; the numbers mean nothing)

Prints the row table, a Markdown table with PASS/FAIL for each requirement cell of §12 and each target of
issue 4 (calls/s >= 1.0x NATS, p50 <= 1.0x gRPC), and one ``ratio`` line per condition; writes everything
(machine, versions, every sample, the verdicts) to ``bench/results/<UTC date>-<hostname>.json``. A verdict is
only a reading of that run; ``n/a`` means a row it needs did not run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import _callbench as B
import _callreport as R
import call_protocol
import grpc_baseline
import idle_memory
import nats_baseline

PARTS = (call_protocol.PART, grpc_baseline.PART, nats_baseline.PART)  # servers start in this order
CODECS = ("json", "msgpack")


def conditions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every condition of the requirement cells, with its value and verdict (``PASS``, ``FAIL`` or ``n/a``)."""
    rows = R.medians(result["samples"])
    memory = result["memory"]

    def get(row: str, key: str) -> float | None:
        return rows.get(row, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: list[dict[str, Any]] = []

    def add(
        cell: tuple[str, str, str], what: str, vs: str, value: float | None, target: float, higher: bool
    ) -> None:
        unit = "x" if vs not in ("ms", "KiB") else vs
        verdict = (
            "n/a" if value is None else ("PASS" if (value >= target) == higher or value == target else "FAIL")
        )
        source, requirement, codec = cell
        out.append(
            {
                "source": source,
                "requirement": requirement,
                "codec": codec,
                "what": what,
                "vs": vs,
                "value": value,
                "target": target,
                "higher": higher,
                "unit": unit,
                "verdict": verdict,
            }
        )

    def cps(row: str) -> float | None:
        return get(row, "calls_per_s")

    def p50(row: str) -> float | None:
        return get(row, "p50_ms")

    for codec in CODECS:
        ssh = f"alknet ssh {codec}"
        add(
            ("issue 4", "pipelined calls/s", codec),
            f"calls/s {ssh} / nats",
            "nats",
            ratio(cps(ssh), cps("nats")),
            1.0,
            True,
        )
        add(
            ("issue 4", "sequential p50", codec),
            f"p50 {ssh} / grpc",
            "grpc",
            ratio(p50(ssh), p50("grpc")),
            1.0,
            False,
        )
    for codec in CODECS:
        ssh = f"alknet ssh {codec}"
        seq = ("spec 12", "sequential p50", codec)
        add(seq, f"p50 {ssh} (ms)", "ms", p50(ssh), 1.0, False)
        add(seq, f"p50 {ssh} / nats", "nats", ratio(p50(ssh), p50("nats")), 1.5, False)
        add(seq, f"p50 {ssh} / grpc", "grpc", ratio(p50(ssh), p50("grpc")), 1.2, False)
        pipe = ("spec 12", "pipelined calls/s", codec)
        add(
            pipe,
            f"calls/s {ssh} / nats",
            "nats",
            ratio(cps(ssh), cps("nats")),
            0.6 if codec == "json" else 0.8,
            True,
        )
        add(pipe, f"calls/s {ssh} / grpc", "grpc", ratio(cps(ssh), cps("grpc")), 3.0, True)
    add(
        ("spec 12", "pipelined calls/s", "msgpack"),
        "calls/s alknet ssh msgpack / json",
        "json",
        ratio(cps("alknet ssh msgpack"), cps("alknet ssh json")),
        1.1,
        True,
    )
    for codec in CODECS:
        kind = f"ssh {codec}"
        mem = ("spec 12", "memory per idle connection", codec)
        add(mem, f"memory per idle {kind} connection (KiB)", "KiB", R.med(memory.get(kind, [])), 64.0, False)
    return out


def _condition_text(c: dict[str, Any]) -> str:
    """``vs nats 0.73x >= 0.8x: FAIL``, ``0.86 ms <= 1 ms: PASS``, ``vs nats n/a >= 0.8x: n/a``."""
    sign = ">=" if c["higher"] else "<="
    if c["unit"] == "x":
        value = "n/a" if c["value"] is None else f"{R.fmt(c['value'])}x"
        return f"vs {c['vs']} {value} {sign} {c['target']:g}x: {c['verdict']}"
    value = "n/a" if c["value"] is None else f"{R.fmt(c['value'])} {c['unit']}"
    return f"{value} {sign} {c['target']:g} {c['unit']}: {c['verdict']}"


def requirements(conds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per requirement cell (§12 table cell or issue-4 target, per codec): ``FAIL`` if a condition
    fails, ``PASS`` if all pass, else ``n/a`` (a row it needs did not run)."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in conds:
        cells.setdefault((c["source"], c["requirement"], c["codec"]), []).append(c)
    out = []
    for (source, requirement, codec), group in cells.items():
        verdicts = {c["verdict"] for c in group}
        verdict = "FAIL" if "FAIL" in verdicts else "PASS" if verdicts == {"PASS"} else "n/a"
        detail = "; ".join(_condition_text(c) for c in group)
        out.append(
            {
                "source": source,
                "requirement": requirement,
                "codec": codec,
                "verdict": verdict,
                "detail": detail,
                "line": f"{verdict}: {source}, {requirement}, {codec}: {detail}",
            }
        )
    return out


def report(result: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(lines, conditions, requirement cells)``: the row table, the requirement table and the ratio lines."""
    conds = conditions(result)
    cells = requirements(conds)
    lines = [*R.row_table(result, B.ROWS), ""]
    lines += ["| requirement | JSON | msgpack |", "|---|---|---|"]
    names = list(dict.fromkeys((c["source"], c["requirement"]) for c in cells))
    for source, requirement in names:
        by_codec = {c["codec"]: c for c in cells if (c["source"], c["requirement"]) == (source, requirement)}
        row = [f"{source}: {requirement}"]
        for codec in CODECS:
            cell = by_codec.get(codec)
            if cell is None:
                row.append("")
            else:
                row.append(f"**{cell['verdict']}** ({cell['detail']})")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    width = max(len(f"{c['source']}: {c['what']}") for c in conds)
    for c in conds:
        label = f"{c['source']}: {c['what']}"
        sign = ">=" if c["higher"] else "<="
        lines.append(
            f"ratio {label:<{width}}  {R.fmt(c['value'], 2):>7}  target {sign} {c['target']:g}: {c['verdict']}"
        )
    return lines, conds, cells


def results_path(results_dir: str | Path, meta: dict[str, Any]) -> Path:
    """``<results_dir>/<UTC date>-<hostname>.json`` (a later run the same day replaces it)."""
    return Path(results_dir) / f"{meta['date'][:10]}-{meta['hostname']}.json"


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = B.parse_args(argv, __doc__, rows=B.ROWS, memory=True, results=True)
    result = B.run(args, PARTS, idle_memory.memory_phase)
    lines, conds, cells = report(result)
    print("\n".join(lines))
    doc = {**result, "ratios": conds, "requirements": cells, "table": lines}
    path = results_path(args.results_dir, result["meta"])
    path.parent.mkdir(parents=True, exist_ok=True)
    R.write_json(path, doc)
    if args.json:
        R.write_json(args.json, doc)
    print(f"\nresults: {path}")
    print(f"total {result['meta']['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    B.cli(main)
