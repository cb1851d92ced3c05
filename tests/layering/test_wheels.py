"""overview.md §3: each distribution builds a wheel with its own version and no ``alknet/__init__.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTS = ("core", "secret", "storage", "flowgraph", "cli")


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_every_distribution_builds_a_wheel_without_namespace_init(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    for dist in DISTS:
        pkg = ROOT / "packages" / f"alknet-{dist}"
        version = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]["version"]
        out = tmp_path / dist
        proc = subprocess.run(
            ["uv", "build", "--offline", "--wheel", "--out-dir", str(out), str(pkg)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        wheels = list(out.glob("*.whl"))
        assert len(wheels) == 1, wheels
        assert wheels[0].name.startswith(f"alknet_{dist}-{version}-")
        names = zipfile.ZipFile(wheels[0]).namelist()
        assert "alknet/__init__.py" not in names
        assert f"alknet/{dist}/__init__.py" in names and f"alknet/{dist}/py.typed" in names
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = zipfile.ZipFile(wheels[0]).read(metadata).decode()
        assert f"\nVersion: {version}\n" in text
