"""The import rules of overview.md §3: light modules stay light, distributions import only what they may."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "packages"
HEAVY = ("asyncssh", "aioquic", "iroh")

LIGHT_MODULES = [
    "alknet.secret",
    "alknet.storage",
    "alknet.flowgraph",
    "alknet.core",
    "alknet.core.errors",
    "alknet.core.auth.identity",
    "alknet.core.auth.keys",
    "alknet.core.auth.token",
    "alknet.core.auth.authorized_keys",
    "alknet.core.auth.config_provider",
    "alknet.core.policy.forwarding",
    "alknet.core.config.dynamic",
    "alknet.core.logfmt",
    "alknet.core.state",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_nothing_heavy(module: str) -> None:
    code = (
        f"import {module}, sys; bad = {{'asyncssh','aioquic','iroh'}} & set(sys.modules); "
        "assert not bad, sorted(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _dist_sources(dist: str) -> list[Path]:
    return sorted((PACKAGES / f"alknet-{dist}" / "src").rglob("*.py"))


ALLOWED_ALKNET = {
    "core": {"core"},
    "secret": {"core", "secret"},
    "storage": {"core", "storage"},
    "flowgraph": {"core", "flowgraph"},
    "cli": {"core", "secret", "storage", "flowgraph", "cli"},
}


@pytest.mark.parametrize("dist", sorted(ALLOWED_ALKNET))
def test_distributions_import_only_what_they_may(dist: str) -> None:
    bad: list[str] = []
    for path in _dist_sources(dist):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "alknet" and len(parts) > 1 and parts[1] not in ALLOWED_ALKNET[dist]:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
            if dist in ("secret", "storage", "flowgraph") and parts[0] in HEAVY:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, bad


def test_no_namespace_init_files() -> None:
    for dist in ALLOWED_ALKNET:
        assert not (PACKAGES / f"alknet-{dist}" / "src" / "alknet" / "__init__.py").exists()
        assert (PACKAGES / f"alknet-{dist}" / "src" / "alknet" / dist / "py.typed").is_file()


def test_core_transport_never_imports_asyncssh() -> None:
    transport = PACKAGES / "alknet-core" / "src" / "alknet" / "core" / "transport"
    for path in sorted(transport.rglob("*.py")):
        assert "asyncssh" not in {n.split(".")[0] for n in _imports(path)}, path


def test_every_asyncssh_connect_and_listen_passes_tunnel() -> None:
    offenders: list[str] = []
    for path in sorted(PACKAGES.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("connect", "listen")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "asyncssh"
                and not any(kw.arg == "tunnel" for kw in node.keywords)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
