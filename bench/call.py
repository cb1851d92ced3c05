#!/usr/bin/env python3
"""Call-protocol bench (issue 4): the issue's entry point, the same as ``bench/run_all.py`` (same flags).

    uv run python bench/call.py            # = uv run python bench/run_all.py
    uv run python bench/call.py --quick

See ``run_all.py`` for what runs; the rows live in ``call_protocol.py``, ``nats_baseline.py``,
``grpc_baseline.py`` and ``idle_memory.py``.
"""

from __future__ import annotations

import _callbench as B
import run_all

if __name__ == "__main__":
    B.cli(run_all.main)
