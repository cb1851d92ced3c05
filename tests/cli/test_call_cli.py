"""``alknet call``, ``alknet worker`` and ``alknet status`` against a real ``alknet serve`` (cli.md §8-§10;
the issue's acceptance): real processes on loopback, keys authorised with ``alknet-scopes``.

One server per module; the worker is started per test. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from head_kit import ALKNET, ROOT, Proc, Started, T, start_head

from alknet.cli.commands.worker import load_module_spec
from alknet.cli.main import main
from alknet.core.auth.keys import generate_private_key, private_key_to_openssh
from alknet.core.call import OperationRegistry


@dataclass
class Head:
    """The running head and the client side: identities worker, caller and admin."""

    started: Started

    @property
    def port(self) -> int:
        return self.started.port

    @property
    def fingerprints(self) -> dict[str, str]:
        return self.started.fingerprints

    @property
    def server(self) -> Proc:
        return self.started.server

    def run(self, who: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ALKNET, argv[0], *self.started.conn(who), *argv[1:]],
            env=self.started.client_env,
            cwd=ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=T,
        )

    def start(self, who: str, *argv: str) -> Proc:
        return Proc([argv[0], *self.started.conn(who), *argv[1:]], self.started.client_env)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    scopes = {"worker": "node:dev1", "caller": "/dev1/*", "admin": "admin:status"}
    started = start_head(tmp_path_factory.mktemp("call-cli"), scopes)
    try:
        yield Head(started)
    finally:
        assert started.server.stop() == 0


@pytest.fixture
def worker(head: Head) -> Iterator[Proc]:
    proc = head.start("worker", "worker", "--node", "dev1", "--module", "examples/echo.py")
    try:
        proc.wait_for(lambda: bool(proc.err_lines('msg="registered" node=dev1 operations=3')), "registered")
        yield proc
    finally:
        assert proc.stop() == 0


def _error_line(cp: subprocess.CompletedProcess[str]) -> str:
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("alknet: error: "), cp.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ acceptance


def test_echo_through_a_worker_then_the_routes_vanish(head: Head) -> None:
    proc = head.start("worker", "worker", "--node", "dev1", "--module", "examples/echo.py")
    try:
        proc.wait_for(lambda: bool(proc.err_lines('msg="registered" node=dev1 operations=3')), "registered")
        cp = head.run("caller", "call", "/dev1/echo/say", '{"text":"hi"}')
        assert (cp.returncode, cp.stdout, cp.stderr) == (0, '{"text":"hi"}\n', "")  # compact when piped
        msgpack = head.run("caller", "call", "--codec", "msgpack", "/dev1/echo/say", '{"text":"hi"}')
        assert (msgpack.returncode, msgpack.stdout) == (0, cp.stdout)
        pretty = head.run("caller", "call", "--pretty", "/dev1/echo/say", '{"text": "hé"}')
        assert pretty.stdout == '{\n  "text": "hé"\n}\n'
        stdin = head.run("caller", "call", "/dev1/echo/say", "-", input='[1, 2.5, null, "x"]')
        assert stdin.stdout == '[1,2.5,null,"x"]\n'
    finally:
        assert proc.stop() == 0  # SIGTERM: exit 0
    gone = head.run("caller", "call", "/dev1/echo/say", '{"text":"hi"}')
    assert gone.returncode == 1 and gone.stdout == ""
    assert _error_line(gone) == "alknet: error: NOT_FOUND: unknown operation"


def test_services_list_and_the_list_table(head: Head, worker: Proc) -> None:
    cp = head.run("caller", "call", "/services/list")
    assert cp.returncode == 0, cp.stderr
    names = [op["name"] for op in json.loads(cp.stdout)["operations"]]
    assert {
        "/services/list",
        "/services/schema",
        "/dev1/echo/say",
        "/dev1/echo/count",
        "/dev1/echo/sleep",
    } <= set(names)
    assert "/services/status" not in names  # needs admin:status
    table = head.run("caller", "call", "--list")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["PATH", "TYPE", "DESCRIPTION"]
    assert [r.split()[0] for r in rows[1:]] == names
    assert any(r.split()[:3] == ["/dev1/echo/say", "query", "returns"] for r in rows)


def test_unknown_operation_exits_1(head: Head) -> None:
    cp = head.run("caller", "call", "/head/nope")
    assert cp.returncode == 1 and cp.stdout == ""
    assert _error_line(cp).startswith("alknet: error: NOT_FOUND: ")


def test_follow_prints_each_output_and_ctrl_c_exits_0(head: Head, worker: Proc) -> None:
    cp = head.run("caller", "call", "/dev1/echo/count", '{"n":3}', "--follow")
    assert (cp.returncode, cp.stdout) == (0, '{"i":0}\n{"i":1}\n{"i":2}\n'), cp.stderr
    proc = head.start(
        "caller", "call", "/dev1/echo/count", '{"n":1000,"interval":0.2}', "--follow", "--timeout", "0"
    )
    try:
        proc.wait_for(lambda: len(proc.out) >= 2, "two outputs")
    finally:
        assert proc.stop(signal.SIGINT) == 0
    assert proc.out[:2] == ['{"i":0}', '{"i":1}'] and proc.err == []


def test_timeout_and_ctrl_c_on_a_plain_call(head: Head, worker: Proc) -> None:
    late = head.run("caller", "call", "/dev1/echo/sleep", '{"seconds":5}', "--timeout", "0.5")
    assert late.returncode == 1 and late.stdout == ""
    assert re.fullmatch(r"alknet: error: TIMEOUT: .* \(retryable\)", _error_line(late)), late.stderr
    proc = head.start("caller", "call", "/dev1/echo/sleep", '{"seconds":30}')
    try:
        time.sleep(2.0)  # time to connect and send the call; Ctrl-C at any point exits 1 "interrupted"
        assert proc.proc.poll() is None
    finally:
        assert proc.stop(signal.SIGINT) == 1
    assert proc.out == [] and proc.err == ["alknet: error: interrupted"]
    ok = head.run("caller", "call", "/dev1/echo/sleep", '{"seconds":0}')
    assert (ok.returncode, ok.stdout) == (0, '{"slept":0.0}\n')


def test_worker_without_the_node_scope_is_refused_and_retries(head: Head) -> None:
    proc = head.start("caller", "worker", "--node", "dev1", "--module", "examples/echo.py")
    try:
        proc.wait_for(lambda: len(proc.err_lines('msg="registration refused"')) >= 2, "two refusals")
        refused = proc.err_lines('msg="registration refused"')
        assert all("level=ERROR" in line and "code=FORBIDDEN" in line for line in refused)
        assert proc.err_lines('msg="reconnecting"')
        assert proc.proc.poll() is None
        listed = head.run("caller", "call", "/services/list")
        assert "/dev1/" not in listed.stdout
    finally:
        assert proc.stop() == 0


def test_status_lists_sessions_and_workers(head: Head, worker: Proc) -> None:
    tunnel = head.start("caller", "connect", "--no-socks5")
    try:
        tunnel.wait_for(lambda: bool(tunnel.err_lines('msg="connected"')), "connected")
        raw = head.run("admin", "status", "--json")
        assert raw.returncode == 0, raw.stderr
        out = json.loads(raw.stdout)
        assert out["server"]["listeners"] == [f"tcp://127.0.0.1:{head.port}"] and "addr" not in out["server"]
        assert len(out["sessions"]) == 3, out["sessions"]  # connect, worker and this status
        assert {s["identity"] for s in out["sessions"]} == set(
            head.fingerprints.values()
        )  # full fingerprints
        assert all(s["user"] == "alknet" and s["transport"] == "tcp" for s in out["sessions"])
        workers = [(w["node"], w["identity"], w["operations"]) for w in out["workers"]]
        assert workers == [("dev1", head.fingerprints["worker"], 3)]
        text = head.run("admin", "status")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0].startswith(f"server  tcp://127.0.0.1:{head.port}  alknet-core ")
        assert "SESSIONS (3)" in lines and "WORKERS (1)" in lines
        assert any(line.split()[0] == "dev1" for line in lines[lines.index("WORKERS (1)") + 2 :])
    finally:
        assert tunnel.stop() == 0


def test_status_needs_admin_status(head: Head) -> None:
    cp = head.run("caller", "status")
    assert cp.returncode == 1 and cp.stdout == ""
    assert _error_line(cp).startswith("alknet: error: FORBIDDEN: ")


# ------------------------------------------------------------------------------------------ in-process


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that must see no connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/services/schema", "{bad"], "INPUT is not valid JSON"),
        (["/services/schema", '{"x": NaN}'], "INPUT is not valid JSON"),
        (["/services/list", "--timeout", "0"], "--timeout 0 (no deadline) is only allowed with --follow"),
        (["/services/list", "--timeout", "-1"], "--timeout: must be a number >= 0"),
        (["--list", "/services/list"], "--list takes no OPERATION"),
        ([], "OPERATION is required"),
        (["/x/y", "--json", "--pretty"], "not allowed with argument"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path))
    port = listener.getsockname()[1]
    rc = main(["call", "--server", f"127.0.0.1:{port}", "--insecure-host-key", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("alknet: error: "), err
    _no_connection(listener)


def test_follow_accepts_timeout_zero(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path))
    key = tmp_path / "id"
    key.write_bytes(private_key_to_openssh(generate_private_key()))
    key.chmod(0o600)
    with socket.socket() as s:  # a port where nothing listens: the command gets as far as connecting
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["call", "--server", f"127.0.0.1:{port}", "--insecure-host-key", "--identity", str(key)]
    rc = main([*argv, "--connect-timeout", "5", "/logs/tail", "--follow", "--timeout", "0"])
    _, err = capsys.readouterr()
    assert rc == 1 and err.startswith("alknet: error: cannot connect to tcp://127.0.0.1:"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node", "Head"], "--node"),
        (["--node", "-x"], "--node"),
        (["--node", "dev1", "--module", "no.such.module"], "no.such.module"),
        (["--node", "dev1", "--module", "examples/nope.py"], "examples/nope.py"),
        (["--node", "dev1", "--module", "examples/echo.py:nope"], "no function nope"),
        ([], "--node is required"),
        (["--node", "dev1", "--service", "storage"], "--service storage"),
    ],
)
def test_worker_start_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    for var in list(os.environ):
        if var.startswith("ALKNET_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)
    key = tmp_path / "id"
    key.write_bytes(private_key_to_openssh(generate_private_key()))
    key.chmod(0o600)
    rc = main(["worker", "--server", "127.0.0.1:1", "--insecure-host-key", "--identity", str(key), *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", err
    assert err.startswith("alknet: error: ") and message in err, err


async def test_module_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for spec in (
        "examples/echo.py",
        "examples.echo",
        "examples.echo:register",
        str(ROOT / "examples/echo.py"),
    ):
        registry = OperationRegistry()
        await load_module_spec(spec, registry)
        assert [s.name for s in registry.specs()] == ["/echo/count", "/echo/say", "/echo/sleep"], spec
