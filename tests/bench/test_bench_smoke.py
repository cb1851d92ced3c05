"""Smoke runs of the benchmarks: every path, row, phase and ratio line works, and no child process is left.

- ``bench/tunnel.py --quick`` (2 MiB transfers, 3 logins, 5 idle sessions). Without OpenSSH installed the OpenSSH
  rows are skipped and their ratios print ``n/a``.
- The call-protocol bench (``call-protocol.md`` §12): ``bench/run_all.py`` with 50 calls per row (results file,
  Markdown tables, one verdict per requirement cell, ratio lines), the same stopped by SIGTERM mid-run, and each
  row script on its own. Without ``nats-server`` the NATS row is skipped and its ratios print ``n/a``.

The counts are tiny, so the numbers are meaningless and nothing here looks at them: the targets are checked by
reading a full run (docs/performance.md), never by a test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
TUNNEL = ROOT / "bench" / "tunnel.py"

RATIOS = (
    "throughput alknet/OpenSSH     -L up",
    "throughput alknet/OpenSSH  SOCKS up",
    "throughput alknet/asyncssh    -L up",
    "throughput alknet/asyncssh SOCKS up",
    "throughput alknet/OpenSSH     -L down",
    "throughput alknet/OpenSSH  SOCKS down",
    "throughput alknet/asyncssh    -L down",
    "throughput alknet/asyncssh SOCKS down",
    "connect+auth alknet/sshd",
    "memory/session alknet/asyncssh",
)


def test_tunnel_bench_quick(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    env["TMPDIR"] = str(tmp_path)  # the run's keys, configs and logs, and a name to look for afterwards
    results = tmp_path / "results.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(TUNNEL), "--quick", "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert time.monotonic() - started < 60
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    for what in RATIOS:
        matching = [line for line in ratio_lines if line.startswith(f"ratio {what} ")]
        assert len(matching) == 1, (what, ratio_lines)
        # a number (or n/a when OpenSSH is missing), then the target and the verdict
        assert re.search(r"\s(\d+\.\d\d|n/a)\s+target [<>]= [\d.]+: (MEETS|MISSES|n/a)$", matching[0]), (
            matching[0]
        )
    for section in ("## Bulk throughput", "## Connect + auth latency", "## Server memory per idle"):
        assert section in proc.stdout
    assert results.exists()
    # every child process is gone (they all name the run's temporary directory), and so is the directory
    leftovers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in leftovers
    assert not list(tmp_path.glob("alknet-bench-*"))


# ------------------------------------------------------------------------------------- call-protocol bench

BENCH = ROOT / "bench"
TAG = "BENCH_SMOKE_TAG"  # in every child's environment: how leftovers are found
TINY = ["--quick", "--warmup", "10", "--sequential", "50", "--seconds", "0.5", "--callers", "8"]
KINDS = ["--kinds", "ssh json,ssh msgpack"]  # the requirement cells' (idle_memory.py's smoke covers raw json)
HAVE_NATS = bool(shutil.which("nats-server")) or os.access("/usr/sbin/nats-server", os.X_OK)
ALKNET_ROWS = ("alknet ssh json", "alknet ssh msgpack", "alknet raw json", "alknet raw msgpack")
META_KEYS = (
    "date",
    "hostname",
    "cpu",
    "cpus",
    "python",
    "asyncssh",
    "nats_server",
    "nats_py",
    "grpcio",
    "msgpack",
)
CELLS = {
    (source, requirement, codec)
    for codec in ("json", "msgpack")
    for source, requirement in (
        ("spec 12", "sequential p50"),
        ("spec 12", "pipelined calls/s"),
        ("spec 12", "memory per idle connection"),
        ("issue 4", "pipelined calls/s"),
        ("issue 4", "sequential p50"),
    )
}
CALL_RATIOS = (
    "issue 4: calls/s alknet ssh json / nats",
    "issue 4: p50 alknet ssh json / grpc",
    "issue 4: calls/s alknet ssh msgpack / nats",
    "issue 4: p50 alknet ssh msgpack / grpc",
    *(
        f"spec 12: {what}"
        for codec in ("json", "msgpack")
        for what in (
            f"p50 alknet ssh {codec} (ms)",
            f"p50 alknet ssh {codec} / nats",
            f"p50 alknet ssh {codec} / grpc",
            f"calls/s alknet ssh {codec} / nats",
            f"calls/s alknet ssh {codec} / grpc",
        )
    ),
    "spec 12: calls/s alknet ssh msgpack / json",
    "spec 12: memory per idle ssh json connection (KiB)",
    "spec 12: memory per idle ssh msgpack connection (KiB)",
)


def _env(tmp_path: Path) -> tuple[dict[str, str], str]:
    """The bench's environment: no ALKNET_ settings, its temporary directories under ``tmp_path``, a tag."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    env["TMPDIR"] = str(tmp_path)
    env[TAG] = tag = uuid.uuid4().hex
    return env, tag


def _tagged(tag: str) -> list[str]:
    """Command lines of live processes whose environment carries ``tag`` (zombies have none)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def _assert_nothing_left(tmp_path: Path, tag: str) -> None:
    deadline = time.monotonic() + 5
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)  # a SIGKILLed group member may take a moment to go
    assert not left, left
    assert not list(tmp_path.glob("alknet-bench-call-*"))  # the run's keys and logs are gone too


def test_call_bench_run_all(tmp_path: Path) -> None:
    env, tag = _env(tmp_path)
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            *TINY,
            "--sessions",
            "5",
            *KINDS,
            "--results-dir",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _assert_nothing_left(tmp_path, tag)

    files = list(results.iterdir())
    assert [f.name for f in files] == [files[0].name]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-" + re.escape(socket.gethostname()) + r"\.json", files[0].name)
    doc = json.loads(files[0].read_text())
    for key in META_KEYS:
        assert doc["meta"].get(key) not in (None, ""), key
    rows = [*ALKNET_ROWS, "grpc", *(["nats"] if HAVE_NATS else [])]
    assert sorted(doc["samples"]) == sorted(rows)
    for row in rows:
        (sample,) = doc["samples"][row]
        assert {"p50_ms", "p99_ms", "calls_per_s"} <= sample.keys()
        assert sample["errors"] == 0, row
    assert sorted(doc["memory"]) == ["ssh json", "ssh msgpack"]
    cells = {(c["source"], c["requirement"], c["codec"]): c for c in doc["requirements"]}
    assert set(cells) == CELLS
    for cell in cells.values():
        assert cell["verdict"] in ("PASS", "FAIL", "n/a"), cell
        assert cell["line"].startswith(cell["verdict"] + ": "), cell

    out = proc.stdout
    assert "| row | seq p50 ms |" in out and "| requirement | JSON | msgpack |" in out
    for row in rows:
        assert f"| {row} | " in out
    for source, requirement, _ in CELLS:
        assert re.search(rf"^\| {source}: {re.escape(requirement)} \| \*\*(PASS|FAIL|n/a)\*\* ", out, re.M)
    ratio_lines = [line for line in out.splitlines() if line.startswith("ratio ")]
    assert len(ratio_lines) == len(CALL_RATIOS), ratio_lines
    for what in CALL_RATIOS:
        matching = [line for line in ratio_lines if line.startswith(f"ratio {what} ")]
        assert len(matching) == 1, (what, ratio_lines)
        # a number (or n/a when a row is missing), then the target and the verdict
        assert re.search(r"\s(-?[\d,]+\.\d\d|n/a)\s+target [<>]= [\d.]+: (PASS|FAIL|n/a)$", matching[0]), (
            matching[0]
        )
    if not HAVE_NATS:
        assert "nats-server is not installed" in proc.stderr
        assert all(line.endswith("n/a") for line in ratio_lines if "/ nats" in line)


def test_call_bench_sigterm_stops_children(tmp_path: Path) -> None:
    env, tag = _env(tmp_path)
    argv = [sys.executable, str(BENCH / "run_all.py"), "--quick", "--seconds", "30", "--no-memory"]
    argv += ["--rows", "alknet ssh json", "--results-dir", str(tmp_path / "results")]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("round 1/1"):
                break
        assert len(_tagged(tag)) >= 2  # the bench and its alknet server, at least
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_nothing_left(tmp_path, tag)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("script", "extra", "expect"),
    [
        ("call_protocol.py", ["--rows", "alknet raw msgpack"], "| alknet raw msgpack | "),
        ("nats_baseline.py", [], "| nats | "),
        ("grpc_baseline.py", [], "| grpc | "),
        ("idle_memory.py", ["--quick", "--sessions", "5", "--kinds", "raw json"], "memory per idle raw json"),
    ],
)
def test_call_bench_script_standalone(tmp_path: Path, script: str, extra: list[str], expect: str) -> None:
    if script == "nats_baseline.py" and not HAVE_NATS:
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    env, tag = _env(tmp_path)
    out = tmp_path / "out.json"
    argv = [sys.executable, str(BENCH / script), *(extra if script == "idle_memory.py" else [*TINY, *extra])]
    proc = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert expect in proc.stdout
    assert "ratio " not in proc.stdout  # verdicts are run_all's
    doc = json.loads(out.read_text())
    assert set(doc) == {"meta", "samples", "memory"}
    _assert_nothing_left(tmp_path, tag)
