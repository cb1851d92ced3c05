"""The README quick start, verbatim: ``alknet serve`` with no configuration, the printed connect line, curl.

Uses the real defaults (tcp 127.0.0.1:2222 for the server, 127.0.0.1:1080 for SOCKS5), as a user would.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ALKNET = [sys.executable, "-m", "alknet.cli"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} never accepted")


@pytest.fixture
def web() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello through alknet\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


def _read_banner(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("  alknet connect "):
            return "".join(lines)
    raise AssertionError("no banner: " + "".join(lines))


def test_quick_start_verbatim(tmp_path: Path, web: int) -> None:
    if not (_port_free(2222) and _port_free(1080)):
        pytest.fail(
            "ports 2222 and 1080 must be free for the quick-start test (they are the documented defaults)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_")}
    server_env = dict(env, ALKNET_HOME=str(tmp_path / "server"))
    client_env = dict(env, ALKNET_HOME=str(tmp_path / "client"))
    t0 = time.monotonic()
    server = subprocess.Popen(
        [*ALKNET, "serve"], env=server_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client: subprocess.Popen[str] | None = None
    try:
        banner = _read_banner(server)
        _wait_port(2222)
        assert time.monotonic() - t0 < 15
        state = tmp_path / "server"
        assert stat.S_IMODE((state / "host_key").stat().st_mode) == 0o600
        assert (state / "authorized_keys").read_text() == ""
        fp = subprocess.run(
            ["ssh-keygen", "-lf", str(state / "host_key.pub")], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        assert f"host key    {fp} (ssh-ed25519, new)" in banner
        assert "listening   tcp 127.0.0.1:2222" in banner
        connect_line = next(
            line.strip() for line in banner.splitlines() if line.startswith("  alknet connect ")
        )
        assert connect_line == f"alknet connect --server 127.0.0.1:2222 --host-key {fp}"
        hup = re.search(r"kill -HUP (\d+)", banner)
        assert hup and int(hup.group(1)) == server.pid

        # the client makes a key; before it is authorised, its login is refused and the server keeps running
        subprocess.run([*ALKNET, "keygen"], env=client_env, check=True, capture_output=True, timeout=60)
        argv = shlex.split(connect_line)[1:]
        client = subprocess.Popen(
            [*ALKNET, *argv], env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_port(1080)
        time.sleep(1.0)
        refused = subprocess.run(
            [
                "curl",
                "-s",
                "--max-time",
                "5",
                "--socks5-hostname",
                "127.0.0.1:1080",
                f"http://127.0.0.1:{web}/",
            ],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0 and server.poll() is None

        # authorise: append the .pub line, SIGHUP; the same client gets in on its next retry
        pub = (tmp_path / "client" / "id_ed25519.pub").read_text()
        with open(state / "authorized_keys", "a") as fh:
            fh.write(pub)
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 45
        body = ""
        while time.monotonic() < deadline:
            r = subprocess.run(
                [
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    "--socks5-hostname",
                    "127.0.0.1:1080",
                    f"http://127.0.0.1:{web}/",
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                body = r.stdout
                break
            time.sleep(0.5)
        assert body == "hello through alknet\n"
    finally:
        if client is not None:
            _cout, cerr = _stop(client)
        _sout, serr = _stop(server)
    assert server.returncode == 0, serr
    assert client is not None and client.returncode == 0, cerr
    assert 'msg="auth attempt"' in serr and "result=reject" in serr and "result=accept" in serr
    assert 'msg="config reload" result=ok' in serr
    assert "trust" not in cerr.lower()  # the pinned host key: no trust-on-first-use warning
    assert str(web) not in serr + cerr  # the tunnel target's port is never logged

    # a second start reuses the key and says so
    again = subprocess.Popen(
        [*ALKNET, "serve"], env=server_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        banner2 = _read_banner(again)
    finally:
        _stop(again)
    assert f"host key    {fp} (ssh-ed25519, existing)" in banner2
