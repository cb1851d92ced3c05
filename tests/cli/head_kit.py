"""Shared kit of the CLI end-to-end tests against a real ``alknet serve`` (``test_call_cli``,
``test_worker_secrets_cli``): a line-collecting background process, a clean environment, and a head started with
one key per identity, each authorised with its ``alknet-scopes``.

Synchronous on purpose (threads collect the output): these tests use module-scoped fixtures and plain functions.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from alknet.core.auth.keys import (
    generate_private_key,
    parse_public_key,
    private_key_to_openssh,
    public_key_of,
)

ALKNET = [sys.executable, "-m", "alknet.cli"]
ROOT = Path(__file__).resolve().parents[2]
T = 30.0


class Proc:
    """A background ``alknet`` process (run from the repository root); stdout and stderr lines are collected by
    threads. ``stdin_text`` is written to its stdin, which is then closed."""

    def __init__(self, argv: list[str], env: dict[str, str], stdin_text: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [*ALKNET, *argv],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if stdin_text is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin_text)
            self.proc.stdin.close()
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str] | None, sink: list[str]) -> None:
        assert stream is not None
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = T) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not seen; stderr:\n" + "\n".join(self.err))
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if not check():
                    raise AssertionError(
                        f"process ended ({self.proc.returncode}); stderr:\n" + "\n".join(self.err)
                    )
            time.sleep(0.02)

    def err_lines(self, fragment: str) -> list[str]:
        return [line for line in list(self.err) if fragment in line]

    @property
    def text(self) -> str:
        return "\n".join(self.out + self.err)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=T)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=T)
        for t in self._threads:
            t.join(timeout=5)
        return rc


def clean_env(home: Path) -> dict[str, str]:
    """The environment minus ``ALKNET_*`` and proxy settings, with ``ALKNET_HOME`` set to ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_") and "proxy" not in k.lower()}
    env["ALKNET_HOME"] = str(home)
    return env


@dataclass
class Started:
    """A running ``alknet serve`` and the client side of the test."""

    server: Proc
    port: int
    fingerprint: str  # the server's host key
    keys: dict[str, Path]  # identity name -> private key file
    fingerprints: dict[str, str]  # identity name -> key fingerprint
    client_env: dict[str, str]

    def conn(self, who: str) -> list[str]:
        """The connection options of identity ``who``."""
        return [
            "--server",
            f"127.0.0.1:{self.port}",
            "--host-key",
            self.fingerprint,
            "--identity",
            str(self.keys[who]),
        ]


def start_head(tmp: Path, scopes: Mapping[str, str]) -> Started:
    """``alknet serve`` on a free loopback port in ``tmp/server``; one new key per identity in ``tmp/client``,
    authorised with ``alknet-scopes="<scopes[name]>"``. The caller stops ``server``."""
    state, client = tmp / "server", tmp / "client"
    for d in (state, client):
        d.mkdir(mode=0o700)
    keys: dict[str, Path] = {}
    fps: dict[str, str] = {}
    lines = []
    for who, held in scopes.items():
        key = generate_private_key()
        path = client / who
        path.write_bytes(private_key_to_openssh(key))
        path.chmod(0o600)
        keys[who] = path
        fps[who] = public_key_of(key).fingerprint
        lines.append(f'alknet-scopes="{held}" {public_key_of(key).line}')
    (state / "authorized_keys").write_text("\n".join(lines) + "\n")
    (state / "authorized_keys").chmod(0o600)
    server = Proc(["serve", "--listen", "tcp://127.0.0.1:0"], clean_env(state))
    try:
        server.wait_for(lambda: any(line.startswith("Connect:") for line in server.out), "the banner")
        found = [m for x in server.out if (m := re.search(r"listening   tcp 127\.0\.0\.1:(\d+)", x))]
        fingerprint = parse_public_key((state / "host_key.pub").read_text().strip()).fingerprint
    except BaseException:
        server.stop()
        raise
    return Started(server, int(found[0][1]), fingerprint, keys, fps, clean_env(client))
