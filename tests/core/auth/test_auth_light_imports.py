"""overview.md §3: the auth modules are light (no asyncssh, aioquic, iroh); each checked in a new process."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = [
    "alknet.core.auth.keys",
    "alknet.core.auth.authorized_keys",
    "alknet.core.auth.policy",
    "alknet.core.auth.certs",
    "alknet.core.auth.token",
    "alknet.core.auth.config_provider",
    "alknet.core.testing.identity_parity",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_heavy_dependencies(module: str) -> None:
    code = (
        f"import {module}, sys; "
        "heavy = {'asyncssh', 'aioquic', 'iroh'} & set(sys.modules); "
        "assert not heavy, sorted(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_brief_one_liner() -> None:
    code = (
        "import alknet.core.auth.keys, alknet.core.auth.token, alknet.core.auth.config_provider, sys; "
        "assert 'asyncssh' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_check_detects_a_heavy_import() -> None:
    code = "import asyncssh, sys; assert 'asyncssh' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
