"""issue 5: a key restored with ``alknet keygen --from-mnemonic`` logs in to a running ``alknet serve`` where the
original public key was authorised, and a host key restored the same way gives the same endpoint id.

Everything runs as real processes of the ``alknet`` command, with the words on stdin as a user would pipe them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ALKNET = [sys.executable, "-m", "alknet.cli"]
WORDS = "legal winner thank year wave sausage worth useful legal winner thank yellow\n"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    env["ALKNET_HOME"] = str(home)
    return env


def _keygen(home: Path, *argv: str) -> dict[str, str]:
    proc = subprocess.run(
        [*ALKNET, "keygen", "--from-mnemonic", *argv],
        input=WORDS,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(part.split("=", 1) for part in proc.stdout.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_restored_identity_logs_in_to_alknet_serve(tmp_path: Path) -> None:
    original = _keygen(tmp_path / "a")  # machine A: identity from the words
    host_a = _keygen(tmp_path / "a", "--role", "host")
    ak = tmp_path / "authorized_keys"
    ak.write_text((tmp_path / "a" / "id_ed25519.pub").read_text())
    # machine A is lost; machine B restores both keys from the same words
    restored = _keygen(tmp_path / "b")
    host_b = _keygen(tmp_path / "b", "--role", "host")
    assert restored["fingerprint"] == original["fingerprint"]
    assert host_b["endpoint_id"] == host_a["endpoint_id"] and host_b["fingerprint"] == host_a["fingerprint"]
    assert (tmp_path / "b" / "id_ed25519").read_bytes() != b""

    port = _free_port()
    server_log = (tmp_path / "server.log").open("w+")
    client_log = (tmp_path / "client.log").open("w+")
    server = subprocess.Popen(
        [*ALKNET, "serve", "--listen", f"127.0.0.1:{port}", "--authorized-keys", str(ak)],
        env=_env(tmp_path / "b"),
        stdout=subprocess.PIPE,
        stderr=server_log,
        text=True,
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        banner = ""
        while "alknet connect" not in banner:
            line = server.stdout.readline()
            assert line, "server exited before its banner"
            banner += line
        # the restored host key is the original one: the client pins A's host fingerprint
        assert f"host key    {host_a['fingerprint']} (ssh-ed25519, existing)" in banner
        client = subprocess.Popen(
            [
                *ALKNET,
                "connect",
                "--server",
                f"127.0.0.1:{port}",
                "--host-key",
                host_a["fingerprint"],
                "--identity",
                str(tmp_path / "b" / "id_ed25519"),
                "--no-socks5",
            ],
            env=_env(tmp_path / "c"),
            stdout=subprocess.DEVNULL,
            stderr=client_log,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 'msg="connected"' not in Path(client_log.name).read_text():
            assert client.poll() is None, Path(client_log.name).read_text()
            time.sleep(0.2)
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (client, server):
            if proc is not None:
                proc.communicate(timeout=20)
    serr = Path(server_log.name).read_text()
    cerr = Path(client_log.name).read_text()
    assert 'msg="connected"' in cerr, cerr
    assert re.search(
        rf'msg="auth attempt" .*key_fingerprint={re.escape(original["fingerprint"])} result=accept', serr
    )
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "legal winner" not in text and "sausage" not in text, path
