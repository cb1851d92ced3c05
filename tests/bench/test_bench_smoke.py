"""Smoke run of the tunnel benchmark (``bench/tunnel.py --quick``): every path, phase and ratio line works.

Tiny counts (2 MiB transfers, 3 logins, 5 idle sessions), so the numbers it prints are meaningless and nothing
here looks at them: the benchmark's targets are checked by reading a full run (docs/performance.md), never by
a test. Without OpenSSH installed the OpenSSH rows are skipped and their ratios print ``n/a``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
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
