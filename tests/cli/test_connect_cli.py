"""``alknet connect`` argument handling (cli.md §3-§4); the live tunnel behaviour is tested with the server."""

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


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("ALKNET_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "state"))
    assert main(["keygen"]) == 0
    return tmp_path


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    assert captured.out.strip() == "" or rc == 0
    return rc, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--server is required for tcp"),
        (["--server", "127.0.0.1", "--tun"], "unrecognised argument --tun"),
        (["--server", "127.0.0.1", "-L", "8080:host"], "invalid forward spec '8080:host'"),
        (["--server", "127.0.0.1", "-R", "70000:x:1"], "70000:x:1"),
        (["--server", "127.0.0.1", "--host-key", "SHA256:x", "--insecure-host-key"], "--host-key conflicts"),
        (["--server", "127.0.0.1", "--transport", "tls", "--tls-pin", "ab", "--tls-insecure"], "only one of"),
        (["--server", "127.0.0.1", "--tls-insecure"], "--tls-* options need --transport tls"),
        (["--server", "127.0.0.1", "--peer", "ab"], "--peer is only for quic and iroh"),
        (["--server", "127.0.0.1", "--socks5", "127.0.0.1:1", "--no-socks5"], "--socks5 conflicts"),
        (["--server", "127.0.0.1", "--socks5", "nonsense"], "--socks5"),
        (["--server", "127.0.0.1", "--keepalive", "0"], "must be > 0"),
        (["--server", "127.0.0.1", "--identity", "/nonexistent/key"], "no identity key at /nonexistent/key"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    rc, err = _err(capsys, ["connect", *argv])
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("alknet: error: ") and message in lines[0], err
    assert lines[0].endswith("(see 'alknet connect --help')")


def test_pem_identity_exits_2(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = home / "pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    rc, err = _err(capsys, ["connect", "--server", "127.0.0.1", "--identity", str(pem)])
    assert rc == 2 and f"{pem}: PEM keys are not supported" in err
    monkeypatch.setenv("ALKNET_IDENTITY", str(pem))
    rc, err = _err(capsys, ["connect", "--server", "127.0.0.1"])
    assert rc == 2 and f"{pem}: PEM keys are not supported" in err


def test_help_names_the_connection_to_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "connection to the server" in text
    assert (
        "This does not change where tunnelled traffic leaves the network; that is the server's --proxy."
        in text
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keeps_listeners_bound_while_retrying_and_exits_0_on_sigint(home: Path) -> None:
    """No server yet: SOCKS5 is bound at once, the client keeps retrying, SIGINT ends it with exit 0.
    HTTP_PROXY/ALL_PROXY are ignored, and forward targets never appear in the logs."""
    socks = _free_port()
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:1", ALL_PROXY="socks5://127.0.0.1:1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alknet.cli",
            "connect",
            "--server",
            f"127.0.0.1:{_free_port()}",
            "-D",
            f"127.0.0.1:{socks}",
            "-L",
            "0:db-secret.internal:15432",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        bound = False
        while time.monotonic() < deadline and not bound:
            with socket.socket() as s:
                bound = s.connect_ex(("127.0.0.1", socks)) == 0
            time.sleep(0.1)
        assert bound
        time.sleep(1.5)  # at least one retry
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert 'msg="socks5 listening"' in err and 'msg="reconnecting" attempt=1' in err
    assert "db-secret" not in err and "15432" not in err
    assert out == ""
