"""call-protocol.md §1 / overview.md §3: ``alknet.core.call`` never imports asyncssh, aioquic or iroh."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = [
    "alknet.core.call",
    "alknet.core.call.frame",
    "alknet.core.call.envelope",
    "alknet.core.call.pending",
    "alknet.core.call.registry",
    "alknet.core.call.schema",
    "alknet.core.call.acl",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_heavy_dependencies(module: str) -> None:
    code = f"import {module}, sys; assert not {{'asyncssh','aioquic','iroh'}} & set(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_public_api_is_exported() -> None:
    import alknet.core.call as call

    assert sorted(call.__all__) == sorted(set(call.__all__))
    for name in call.__all__:
        assert getattr(call, name) is not None
