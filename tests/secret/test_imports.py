"""Import rules (secret.md §1, overview.md §3): alknet.secret never pulls in an SSH or QUIC stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import alknet.secret

SRC = Path(__file__).resolve().parents[2] / "packages" / "alknet-secret" / "src" / "alknet" / "secret"
FORBIDDEN_TOP = {"asyncssh", "aioquic", "iroh"}
FORBIDDEN_ALKNET = ("alknet.storage", "alknet.flowgraph", "alknet.cli")

CHECK = """
import sys
import alknet.secret, alknet.secret.service, alknet.secret.openssh, alknet.secret.keygen
import alknet.secret.crypto, alknet.secret.derive, alknet.secret.mnemonic, alknet.secret.paths
import alknet.secret.password, alknet.secret.errors
loaded = set(sys.modules)
bad = {'asyncssh', 'aioquic', 'iroh'} & loaded
layers = (['alknet', 'storage'], ['alknet', 'flowgraph'], ['alknet', 'cli'])
bad |= {m for m in loaded if m.split('.')[:2] in layers}
assert not bad, sorted(bad)
"""


def test_fresh_interpreter_import_is_light() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_source_imports_nothing_forbidden() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_TOP, (path.name, name)
                assert not name.startswith(FORBIDDEN_ALKNET), (path.name, name)


def test_no_alknet_init_in_namespace() -> None:
    assert not (SRC.parent / "__init__.py").exists()


def test_public_names_are_exported() -> None:
    names = alknet.secret.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(alknet.secret, name), name


def test_modules_stay_small() -> None:
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) < 600, path.name
