"""A wheel of alknet-secret installed into an empty venv with only its dependencies works (issue 5).

Offline by design: the two wheels come from ``uv build --offline`` (hatchling from the uv cache), and the
third-party dependencies are installed from ``uv.lock`` with ``uv sync --frozen --offline --package
alknet-secret --no-install-workspace`` into the new venv. (``uv pip install --offline -r requirements``
does not work here: uv's registry metadata cache has no index pages for packages that ``uv sync`` fetched
by their locked URLs, so an offline resolve finds no versions.) The workspace packages are then installed
from the wheels with ``--no-deps`` and ``uv pip check`` confirms the dependency metadata is satisfied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv")

EXPECTED_DISTS = {
    "alknet-core",
    "alknet-secret",
    "mnemonic",
    "slip10",
    "cryptography",
    "asyncssh",
    "msgpack",
    "jsonschema",
}
NEVER = {"alknet-cli", "alknet-storage", "alknet-flowgraph", "aioquic", "iroh", "pytest", "hypothesis"}

SCRIPT = r"""
import asyncio, sys
import alknet.secret as s
assert "site-packages" in s.__file__, s.__file__
heavy = {"asyncssh", "aioquic", "iroh"} & set(sys.modules)
assert not heavy, heavy
words = "abandon " * 11 + "about"
key = s.derive_ed25519_from_seed(s.mnemonic_to_seed(words), s.IDENTITY_PATH)
assert s.openssh_fingerprint(key.public_key) == "SHA256:F0YtA4EZe6p9T0vW92Y8PsMvPsFJQ6lC4EhL6AGyLls"

async def main():
    service = s.SecretService()
    assert await service.unlock(words) == "SHA256:F0YtA4EZe6p9T0vW92Y8PsMvPsFJQ6lC4EhL6AGyLls"
    blob = await service.encrypt("hello from a wheel", aad=b"ctx")
    again = s.EncryptedData.from_json(blob.to_json())
    assert await service.decrypt_text(again, aad=b"ctx") == "hello from a wheel"
    known = {"key_version": 2, "salt": "A" * 43 + "=", "iv": "A" * 16}
    known["data"] = "m/h97nNfuhWtDnf2aVtjpzLBp5ChBA=="
    assert await service.decrypt(known) == b"alknet"
    assert await service.derive_site_password("example.com") == "q\\t|1NH)m*<)*@$?rA-2cZm}|>N\\*;'C"
    await service.lock()

asyncio.run(main())
print("ok")
"""


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")
    }
    env["UV_NO_PROGRESS"] = "1"
    return env


@pytest.mark.timeout(900)
@pytest.mark.skipif(UV is None, reason="needs uv on PATH")
def test_wheel_in_empty_venv(tmp_path: Path) -> None:
    assert UV is not None
    env = _clean_env()
    wheels = tmp_path / "wheels"
    for dist in ("alknet-core", "alknet-secret"):
        _run(
            [UV, "build", "--offline", "--package", dist, "--wheel", "--out-dir", str(wheels)],
            cwd=ROOT,
            env=env,
        )
    secret_version = tomllib.loads((ROOT / "packages/alknet-secret/pyproject.toml").read_text())["project"][
        "version"
    ]
    secret_wheel = wheels / f"alknet_secret-{secret_version}-py3-none-any.whl"
    with zipfile.ZipFile(secret_wheel) as zf:
        names = zf.namelist()
    assert "alknet/__init__.py" not in names
    assert "alknet/secret/__init__.py" in names and "alknet/secret/py.typed" in names

    venv = tmp_path / "venv"
    _run([UV, "venv", "--offline", "--python", sys.executable, str(venv)], cwd=tmp_path, env=env)
    python = str(venv / "bin" / "python")
    sync_env = {**env, "UV_PROJECT_ENVIRONMENT": str(venv)}
    _run(
        [
            UV,
            "sync",
            "--frozen",
            "--offline",
            "--package",
            "alknet-secret",
            "--no-dev",
            "--no-install-workspace",
        ],
        cwd=ROOT,
        env=sync_env,
    )
    _run(
        [
            UV,
            "pip",
            "install",
            "--offline",
            "--no-deps",
            "--python",
            python,
            *map(str, sorted(wheels.glob("*.whl"))),
        ],
        cwd=tmp_path,
        env=env,
    )
    _run([UV, "pip", "check", "--python", python], cwd=tmp_path, env=env)
    listed = json.loads(
        _run([UV, "pip", "list", "--format", "json", "--python", python], cwd=tmp_path, env=env)
    )
    installed = {item["name"].lower() for item in listed}
    assert installed >= EXPECTED_DISTS, EXPECTED_DISTS - installed
    assert not NEVER & installed, NEVER & installed
    versions = {item["name"].lower(): item["version"] for item in listed}
    assert versions["alknet-secret"] == secret_version
    assert "editable_project_location" not in json.dumps(listed)

    assert _run([python, "-I", "-c", SCRIPT], cwd=tmp_path, env=env).strip() == "ok"
