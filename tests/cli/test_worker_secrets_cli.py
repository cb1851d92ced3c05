"""``alknet worker --service secrets [--unlock]`` (cli.md §9, secret.md §9, §12) with real processes: an
``alknet serve`` in a temp ``ALKNET_HOME``, a worker whose words come on stdin, and ``alknet call
/<node>/secrets/...`` from identities holding a path grant and ``secrets:*`` scopes in ``authorized_keys``.

No secret (the words, the seed, a private key) may appear in anything a process prints.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from head_kit import ALKNET, Proc, Started, T, start_head

from alknet.cli.main import main
from alknet.core.auth.keys import (
    generate_private_key,
    private_key_to_openssh,
)
from alknet.secret import mnemonic_to_seed

pytestmark = pytest.mark.timeout(240)  # a dozen process starts on a loaded machine

NODE = "vault"

# secret.md §2-§4 known answers for the "abandon ... about" words with an empty passphrase.
ABANDON = "abandon " * 11 + "about"
IDENTITY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOeMJ2ankvCb/MtRSTlorDIig+jQIaMAY3hNgGkpdi7M"
IDENTITY_FINGERPRINT = "SHA256:F0YtA4EZe6p9T0vW92Y8PsMvPsFJQ6lC4EhL6AGyLls"
IDENTITY_PRIVATE = "603aa5c626317fda4afd87b902e5c9de76c33f40834005245e1c5a675e92d700"
IDENTITY_PATH = "m/74'/0'/0'/0'"
LOCKED = {"locked": True, "current_key_version": 2}
UNLOCKED = {"locked": False, "current_key_version": 2}


def _secret_needles() -> list[str]:
    """What must never be printed: the words (whole, any two neighbours, the rare word alone), the seed and
    the identity private key (hex and base64)."""
    words = ABANDON.split()
    seed = mnemonic_to_seed(ABANDON, "")
    needles = [ABANDON, "abandon", *(f"{a} {b}" for a, b in itertools.pairwise(words))]
    needles += [bytes(seed).hex(), base64.b64encode(bytes(seed)).decode()]
    needles += [IDENTITY_PRIVATE, base64.b64encode(bytes.fromhex(IDENTITY_PRIVATE)).decode()]
    seed[:] = bytes(len(seed))
    return needles


@dataclass
class Head:
    started: Started
    printed: list[str] = field(default_factory=list)  # stdout and stderr of every finished process

    def conn(self, who: str) -> list[str]:
        return self.started.conn(who)

    @property
    def env(self) -> dict[str, str]:
        return self.started.client_env

    def call(self, who: str, *argv: str) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(
            [*ALKNET, "call", *self.conn(who), *argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=T,
        )
        self.printed += [cp.stdout, cp.stderr]
        return cp

    def ok(self, who: str, *argv: str) -> object:
        cp = self.call(who, *argv)
        assert cp.returncode == 0 and cp.stderr == "", cp.stderr
        return json.loads(cp.stdout)

    def error(self, who: str, *argv: str) -> str:
        cp = self.call(who, *argv)
        lines = cp.stderr.splitlines()
        assert cp.returncode == 1 and cp.stdout == "" and len(lines) == 1, cp.stderr
        return lines[0]

    def worker(self, *argv: str, stdin_text: str | None = None) -> Proc:
        return Proc(["worker", *self.conn("worker"), "--node", NODE, *argv], self.env, stdin_text)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    scopes = {
        "worker": f"node:{NODE}",
        "reader": f"/{NODE}/secrets/*,secrets:public",
        "admin": f"/{NODE}/*,secrets:admin",
        "nobody": f"/{NODE}/*",  # the path grant without any secrets:* scope
        "nogrant": "secrets:public",  # the scope without the path grant
    }
    started = start_head(tmp_path_factory.mktemp("worker-secrets"), scopes)
    server = started.server
    try:
        h = Head(started)
        yield h
    finally:
        assert server.stop() == 0
    for text in [server.text, *h.printed]:
        for needle in _secret_needles():
            assert needle not in text


def _registered(proc: Proc, count: int = 1) -> None:
    proc.wait_for(lambda: len(proc.err_lines(f'msg="registered" node={NODE}')) >= count, "registered")


# ------------------------------------------------------------------------------------------ end to end


def test_unlocked_secrets_are_routed_through_the_head(head: Head) -> None:
    worker = head.worker("--service", "secrets", "--unlock", stdin_text=ABANDON + "\n")
    try:
        _registered(worker)
        assert worker.err_lines(f'msg="registered" node={NODE} operations=10')  # every op but unlock
        (unlocked,) = worker.err_lines('msg="secrets unlocked"')
        assert f"fingerprint={IDENTITY_FINGERPRINT}" in unlocked
        status = f"/{NODE}/secrets/status"
        assert head.ok("reader", status) == UNLOCKED  # INPUT defaults to {}
        assert head.ok("reader", status, "null") == UNLOCKED
        public = head.ok("reader", f"/{NODE}/secrets/publicKey", json.dumps({"path": IDENTITY_PATH}))
        assert isinstance(public, dict)
        assert (public["openssh"], public["fingerprint"]) == (IDENTITY_LINE, IDENTITY_FINGERPRINT)
        # the secrets:* scopes still apply behind the node prefix, and so does the path grant
        path = json.dumps({"path": IDENTITY_PATH})
        assert head.error("reader", f"/{NODE}/secrets/deriveEd25519", path).startswith(
            "alknet: error: FORBIDDEN: "
        )
        assert head.error("nobody", status).startswith("alknet: error: FORBIDDEN: ")
        assert head.error("nogrant", status).startswith("alknet: error: FORBIDDEN: ")
        unlock = json.dumps({"mnemonic": "x"})
        assert head.error("admin", f"/{NODE}/secrets/unlock", unlock).startswith("alknet: error: NOT_FOUND: ")
        # an admin locks it remotely; the key operations then answer LOCKED
        assert head.ok("admin", f"/{NODE}/secrets/lock", "null") == {}
        assert head.ok("reader", status) == LOCKED
        locked = head.error("reader", f"/{NODE}/secrets/publicKey", path)
        assert locked.startswith("alknet: error: LOCKED: ") and "(retryable)" not in locked
    finally:
        assert worker.stop() == 0
        head.printed.append(worker.text)
    assert worker.out == []


def test_without_unlock_the_service_stays_locked_next_to_a_module(head: Head) -> None:
    echo = Path(__file__).resolve().parents[2] / "examples" / "echo.py"
    worker = head.worker("--service", "secrets", "--module", str(echo))
    try:
        _registered(worker)
        assert worker.err_lines(f'msg="registered" node={NODE} operations=13')  # 10 secrets + 3 echo
        assert head.ok("reader", f"/{NODE}/secrets/status", "{}") == LOCKED
        path = json.dumps({"path": IDENTITY_PATH})
        assert head.error("reader", f"/{NODE}/secrets/publicKey", path).startswith("alknet: error: LOCKED: ")
        assert head.ok("admin", f"/{NODE}/echo/say", '{"text":"hi"}') == {"text": "hi"}
        assert not worker.err_lines("secrets unlocked")
    finally:
        assert worker.stop() == 0
        head.printed.append(worker.text)


# ------------------------------------------------------------------------------------------ start errors


def _run_worker(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """``alknet worker`` in-process against a port where nothing listens (it must exit before dialling)."""
    for var in list(os.environ):
        if var.startswith("ALKNET_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path))
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    key = tmp_path / "id"
    key.write_bytes(private_key_to_openssh(generate_private_key()))
    key.chmod(0o600)
    rc = main(["worker", "--server", "127.0.0.1:1", "--insecure-host-key", "--identity", str(key), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("argv", "stdin", "rc", "message"),
    [
        (["--service", "storage"], None, 2, "--service storage: built-in services other than secrets"),
        (["--service", "flowgraph"], None, 2, "--service flowgraph: built-in services other than secrets"),
        (["--service", "secrets", "--service", "storage"], None, 2, "--service storage"),
        (["--unlock"], ABANDON + "\n", 2, "--unlock needs --service secrets"),
        (["--service", "secrets", "--unlock"], "", 2, "no mnemonic words on stdin"),
        (["--service", "secrets", "--unlock"], "abandon " * 12 + "\n", 1, "checksum mismatch"),
        (
            ["--service", "secrets", "--unlock"],
            "abandon " * 11 + "\n",
            1,
            "cannot unlock the secrets service",
        ),
    ],
)
def test_worker_secrets_start_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    stdin: str | None,
    rc: int,
    message: str,
) -> None:
    code, out, err = _run_worker(monkeypatch, capsys, tmp_path, ["--node", NODE, *argv], stdin)
    assert (code, out) == (rc, ""), err
    assert err.splitlines()[-1].startswith("alknet: error: ") and message in err, err
    assert "abandon" not in err
