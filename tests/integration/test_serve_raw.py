"""``alknet serve --listen raw+tcp://...``: the call protocol with token auth and no SSH (transport-and-ssh §15)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alknet.core.auth.keys import parse_public_key
from alknet.core.call.peer import CallPeer
from alknet.core.raw import RawAuthError, open_raw_channel

ALKNET = [sys.executable, "-m", "alknet.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    env["ALKNET_HOME"] = str(home)
    return env


def _run(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ALKNET, *argv], env=_env(home), capture_output=True, text=True, timeout=60)


def test_non_loopback_raw_listener_needs_insecure_plaintext(tmp_path: Path) -> None:
    proc = _run(tmp_path / "s", "serve", "--listen", "raw+tcp://0.0.0.0:0")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith("alknet: error: ") and "insecure" in proc.stderr


def test_raw_listener_without_token_auth_refuses_to_start(tmp_path: Path) -> None:
    proc = _run(tmp_path / "s", "serve", "--no-token-auth", "--listen", "raw+tcp://127.0.0.1:0")
    assert proc.returncode == 2 and "token auth" in proc.stderr.splitlines()[-1]


@pytest.mark.timeout(90)
async def test_token_from_alknet_token_calls_services_list(tmp_path: Path) -> None:
    client = tmp_path / "client"
    assert _run(client, "keygen").returncode == 0
    state = tmp_path / "server"
    state.mkdir(mode=0o700)
    pub = (client / "id_ed25519.pub").read_text()
    (state / "authorized_keys").write_text(pub)
    os.chmod(state / "authorized_keys", 0o600)
    server = subprocess.Popen(
        [*ALKNET, "serve", "--listen", "raw+tcp://127.0.0.1:0", "--listen", "127.0.0.1:0"],
        env=_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner = ""
        while "Connect:" not in banner:
            line = await asyncio.to_thread(server.stdout.readline)
            assert line, "no banner"
            banner += line
        m = re.search(r"listening   raw\+tcp 127\.0\.0\.1:(\d+)", banner)
        assert m, banner
        port = int(m.group(1))
        token = _run(client, "token").stdout.strip()
        stream, identity = await open_raw_channel("127.0.0.1", port, token)
        assert identity.id == parse_public_key(pub).fingerprint  # the same id an SSH login gets
        peer = CallPeer(stream, identity=identity)
        peer.start()
        try:
            listing = await peer.call("/services/list", {})
            paths = {op["name"] for op in listing["operations"]}
            assert {"/services/list", "/services/schema"} <= paths
        finally:
            await peer.close()
        stale = _run(client, "token", "--at", str(int(time.time()) - 400)).stdout.strip()
        with pytest.raises(RawAuthError):
            await open_raw_channel("127.0.0.1", port, stale)
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(server.communicate, timeout=20)
    assert server.returncode == 0, err
    assert token not in err
