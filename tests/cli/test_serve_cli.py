"""``alknet serve`` start-up checks and first-run files (cli.md §2, overview.md §6-§7)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alknet.cli.main import main

ALKNET = [sys.executable, "-m", "alknet.cli"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("ALKNET_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "state"))
    return tmp_path


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("alknet: error: "), err
    return lines[0]


def test_bogus_flag(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error(capsys, ["serve", "--bogus"])
    assert line.endswith("(see 'alknet serve --help')")


def test_help_explains_the_data_plane_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "data plane" in text and "alknet connect" in text


def test_version_flag_on_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    top = capsys.readouterr().out
    assert main(["serve", "--version"]) == 0
    assert capsys.readouterr().out == top


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "a.pem"], "--tls-cert needs --tls-key"),
        (["--tls-key", "a.pem"], "--tls-key needs --tls-cert"),
        (["--transport", "tcp", "--stealth"], "--stealth needs a tls listener"),
        (["--listen", "tcp://127.0.0.1:2222", "--listen", "tcp://127.0.0.1:2222"], "127.0.0.1:2222"),
        (["--max-auth-attempts", "ten"], "--max-auth-attempts"),
        (["--listen", "udp://1.2.3.4:1"], "udp"),
    ],
)
def test_conflicts_exit_2(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in _one_error(capsys, ["serve", *argv])
    assert not (env / "state" / "host_key").exists()


def test_env_variable_malformed_names_it(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALKNET_MAX_AUTH_ATTEMPTS", "ten")
    assert "ALKNET_MAX_AUTH_ATTEMPTS" in _one_error(capsys, ["serve"])


def test_explicit_missing_key_is_not_created(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error(capsys, ["serve", "--key", "/nonexistent/host_key"])
    assert "/nonexistent/host_key" in line
    assert not (env / "state" / "host_key").exists()


def test_unsafe_permissions_exit_2_and_leave_files(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = env / "state"
    assert main(["keygen", "--role", "host"]) == 0
    capsys.readouterr()
    key = state / "host_key"
    before = key.read_bytes()
    os.chmod(key, 0o644)
    line = _one_error(capsys, ["serve"])
    assert line == f"alknet: error: permissions 0644 on {key} are too open (need 0600)"
    assert key.read_bytes() == before and (key.stat().st_mode & 0o777) == 0o644
    os.chmod(key, 0o600)
    os.chmod(state, 0o777)
    line = _one_error(capsys, ["serve"])
    assert str(state) in line and "0777" in line


def test_pem_host_key_exit_2(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = env / "pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(pem, 0o600)
    assert "PEM keys are not supported" in _one_error(capsys, ["serve", "--key", str(pem)])


def _serve(env_dir: Path, *argv: str) -> subprocess.Popen[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    e["ALKNET_HOME"] = str(env_dir / "state")
    return subprocess.Popen(
        [*ALKNET, "serve", *argv], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def test_port_in_use_exit_1_one_line(env: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(env, "--listen", f"127.0.0.1:{port}")
        out, err = _finish(proc)
    assert proc.returncode == 1
    assert out == ""
    assert (
        err.splitlines()[-1]
        == f"alknet: error: cannot listen on tcp 127.0.0.1:{port}: address already in use"
    )
    assert not any(line.startswith("alknet: error:") for line in err.splitlines()[:-1])


def test_quiet_prints_nothing_and_sigterm_exits_0(env: Path) -> None:
    proc = _serve(env, "--quiet", "--listen", "tcp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0")
    time.sleep(0.5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (env / "state" / "tls" / "self-signed.pem").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    assert out == ""
    assert 'msg="server ready" listeners=2' in err
    assert 'msg="tls certificate" source=self-signed sha256=' in err
