"""The tunnel end to end with the real command: ``alknet connect`` <-> ``alknet serve`` as subprocesses
(``python -m alknet.cli``) on loopback, over tcp and tls (transport-and-ssh.md §2-§3, §8-§14; cli.md §2-§4).

Every server and client here runs as its own process with its own state dir; targets are small servers in the
test's event loop that count the connections they accept. Every stderr captured in this module is kept, and
the last test checks that no tunnel target host or port ever reached one of them (§12).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_kit import Proc, T, alknet
from proc_kit import Runner as ProcRunner
from proc_kit import clean_env as _env
from ssh_server_kit import KeyPair, client_options, free_port, new_keypair

from alknet.core.auth.keys import write_keypair
from alknet.core.ssh.socks5 import Socks5Server

pytestmark = pytest.mark.timeout(120)


# Every stderr of an alknet process run by this module, and every tunnel target (host names and ports) used;
# the last test of the module checks that none of the targets appears in any of the logs.
STDERRS: list[tuple[str, str]] = []
TARGET_NAMES = {"localhost", "hidden-target"}
TARGET_PORTS: set[int] = set()


def _record(proc: Proc) -> None:
    STDERRS.append((proc.name, proc.stderr))


@dataclass
class Server:
    proc: Proc
    state: Path
    fingerprint: str
    ports: dict[str, int]
    pin: str | None

    def client_args(self, kind: str = "tcp") -> list[str]:
        args = ["--server", f"127.0.0.1:{self.ports[kind]}", "--host-key", self.fingerprint]
        if kind == "tls":
            assert self.pin is not None
            args += ["--transport", "tls", "--tls-pin", self.pin]
        return args


@dataclass
class Client:
    proc: Proc
    socks: int
    forwards: list[int] = field(default_factory=list)


class Runner(ProcRunner):
    """Starts ``alknet serve`` and ``alknet connect`` processes; stops whatever is left at the end."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self._n = 0

    def state(self, name: str) -> Path:
        return self.dir(name)

    async def serve(
        self, *args: str, state: str = "server", keys: Sequence[KeyPair] = (), config: str | None = None
    ) -> Server:
        home = self.state(state)
        ak = home / "authorized_keys"
        if keys or not ak.exists():
            ak.write_text("".join(k.line + "\n" for k in keys))
            ak.chmod(0o600)
        argv = ["serve", "--log-time", "never", *args]
        if config is not None:
            cfg = home / "alknet.toml"
            cfg.write_text(config)
            argv += ["--config", str(cfg)]
        self._n += 1
        proc = await alknet(argv, _env(home), name=f"serve#{self._n}", on_exit=_record).start()
        self.procs.append(proc)
        await proc.wait_line('msg="server ready"')
        banner = "\n".join(proc.out)
        fp = re.search(r"host key    (SHA256:\S+)", banner)
        assert fp, banner
        ports: dict[str, int] = {}
        pin = None
        for m in re.finditer(r"listening   (tcp|tls) (\S+)(?:   sha256 ([0-9a-f]{64}))?", banner):
            ports[m.group(1)] = int(m.group(2).rpartition(":")[2])
            pin = m.group(3) or pin
        return Server(proc, home, fp.group(1), ports, pin)

    async def connect(
        self,
        server: Server,
        *args: str,
        kind: str = "tcp",
        key: KeyPair | None = None,
        state: str | None = None,
        wait_connected: bool = True,
    ) -> Client:
        self._n += 1
        home = self.state(state or f"client{self._n}")
        identity = home / "id_ed25519"
        if not identity.exists():
            write_keypair(identity, (key or new_keypair()).key, "test client")
        proc = await alknet(
            ["connect", "--log-time", "never", *server.client_args(kind), "-D", "127.0.0.1:0", *args],
            _env(home),
            name=f"connect#{self._n}",
            on_exit=_record,
        ).start()
        self.procs.append(proc)
        socks = await proc.wait_line('msg="socks5 listening"')
        client = Client(proc, int(socks.rpartition(":")[2]))
        n_forwards = sum(1 for a in args if a in ("-L", "--forward"))
        if n_forwards:
            await proc.wait_line('msg="forward listening"', count=n_forwards)
            client.forwards = [
                int(line.rpartition(":")[2]) for line in proc.matching('msg="forward listening"')
            ]
        if wait_connected:
            await proc.wait_line('msg="connected"')
        return client


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Runner]:
    runner = Runner(tmp_path)
    try:
        yield runner
    finally:
        await runner.aclose()


# ---------------------------------------------------------------------------------------------- targets


class Web:
    """A tiny HTTP server that counts accepted TCP connections (the recording listener)."""

    def __init__(self, host: str = "127.0.0.1", body: bytes = b"the tunnelled page\n") -> None:
        self.host = host
        self.body = body
        self.accepted = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def __aenter__(self) -> Web:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        TARGET_PORTS.add(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(self.body)
                + self.body
            )
            await writer.drain()
        writer.close()


class Source:
    """Streams bytes to every accepted connection until it goes away (load for the shutdown tests)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Source:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        TARGET_PORTS.add(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):
            while True:
                writer.write(chunk)
                await writer.drain()
        writer.close()


async def curl(*args: str) -> tuple[int, bytes, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "10",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


async def socks_get(socks: int, url: str) -> tuple[int, bytes, str]:
    return await curl("--socks5-hostname", f"127.0.0.1:{socks}", url)


async def direct_get(port: int) -> tuple[int, bytes, str]:
    return await curl("--noproxy", "*", f"http://127.0.0.1:{port}/")


async def eventually_get(port: int, body: bytes, timeout: float = 15.0) -> None:
    """Poll ``http://127.0.0.1:<port>/`` until it returns ``body`` (a remote forward being bound)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes, str] = (0, b"", "")
    while time.monotonic() < deadline:
        last = await direct_get(port)
        if last[:2] == (0, body):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"port {port} never served the page: {last}")


async def socks5_reply(socks: int, host: str, port: int) -> int:
    """One raw SOCKS5 CONNECT (domain ATYP); the REP byte of the reply."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", socks), 5)
    try:
        writer.write(b"\x05\x01\x00")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x05\x00"
        name = host.encode()
        writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = await asyncio.wait_for(reader.readexactly(10), 10)
        return reply[1]
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["tcp", "tls"])
async def test_socks5_by_name_ipv4_ipv6_local_and_remote_forward(run: Runner, kind: str) -> None:
    """curl through SOCKS5 by name (``localhost``, resolved by the server), by IPv4 and by IPv6 literal; -L
    and -R; both processes at DEBUG (the log check at the end of the module covers DEBUG output too)."""
    key = new_keypair()
    async with Web() as web4, Web("::1", b"over ipv6\n") as web6, Web(body=b"remote side\n") as back:
        server = await run.serve("--listen", f"{kind}://127.0.0.1:0", "--log-level", "debug", keys=[key])
        assert set(server.ports) == {kind}
        if kind == "tls":
            assert server.pin is not None
        rport = free_port()
        TARGET_PORTS.add(rport)
        client = await run.connect(
            server,
            "--log-level",
            "debug",
            "-L",
            f"0:localhost:{web4.port}",
            "-R",
            f"{rport}:127.0.0.1:{back.port}",
            kind=kind,
            key=key,
        )
        assert f"{kind}://127.0.0.1:{server.ports[kind]}" in client.proc.matching('msg="connected"')[0]

        assert await socks_get(client.socks, f"http://localhost:{web4.port}/") == (0, web4.body, "")
        assert await socks_get(client.socks, f"http://127.0.0.1:{web4.port}/") == (0, web4.body, "")
        assert await socks_get(client.socks, f"http://[::1]:{web6.port}/") == (0, web6.body, "")
        assert web6.accepted == 1
        assert await direct_get(client.forwards[0]) == (0, web4.body, "")
        assert web4.accepted == 3
        await eventually_get(rport, back.body)

        assert await client.proc.stop() == 0
        assert await server.proc.stop() == 0
    assert 'msg="auth attempt"' in server.proc.stderr and "result=accept" in server.proc.stderr
    assert f"transport={kind}" in server.proc.matching('msg="connection opened"')[0]


async def test_policy_deny_is_0x02_and_never_connects(run: Runner) -> None:
    """``--forwarding-default deny`` plus one TOML allow rule: the allowed target works; denied targets (by
    name, IPv4 and IPv6) get SOCKS5 reply 0x02 (curl exit 97) and their listeners never see a connection."""
    key = new_keypair()
    async with Web() as allowed, Web() as denied, Web("::1") as denied6:
        config = f'[[forwarding.rules]]\ntarget = "127.0.0.1:{allowed.port}"\naction = "allow"\n'
        server = await run.serve(
            "--listen", "tcp://127.0.0.1:0", "--forwarding-default", "deny", keys=[key], config=config
        )
        client = await run.connect(server, key=key)
        for url in (
            f"http://localhost:{denied.port}/",
            f"http://127.0.0.1:{denied.port}/",
            f"http://[::1]:{denied6.port}/",
        ):
            rc, _, err = await socks_get(client.socks, url)
            assert rc == 97, err  # CURLE_PROXY: the SOCKS5 server said "not allowed"
        assert await socks5_reply(client.socks, "localhost", denied.port) == 0x02
        assert await socks5_reply(client.socks, "127.0.0.1", denied.port) == 0x02
        # the same session still opens allowed channels
        assert await socks_get(client.socks, f"http://127.0.0.1:{allowed.port}/") == (0, allowed.body, "")
        await asyncio.sleep(0.2)
        assert (denied.accepted, denied6.accepted, allowed.accepted) == (0, 0, 1)
        assert await client.proc.stop() == 0
        assert await server.proc.stop() == 0


async def test_server_outbound_through_a_socks5_proxy_gets_the_name(run: Runner) -> None:
    """``serve --proxy socks5://...``: the tunnel to ``hidden-target.test:4444`` reaches the test proxy as a
    name (the proxy resolves it: here it connects every request to the web server)."""
    key = new_keypair()
    TARGET_PORTS.add(4444)
    requests: list[tuple[str, int]] = []
    async with Web() as web:

        async def open_channel(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            requests.append((host, port))
            return await asyncio.open_connection("127.0.0.1", web.port)

        proxy = Socks5Server(open_channel, "127.0.0.1", 0)
        await proxy.start()
        try:
            server = await run.serve(
                "--listen", "tcp://127.0.0.1:0", "--proxy", f"socks5://127.0.0.1:{proxy.port}", keys=[key]
            )
            client = await run.connect(server, key=key)
            assert await socks_get(client.socks, "http://hidden-target.test:4444/") == (0, web.body, "")
            assert requests == [("hidden-target.test", 4444)]
            assert await client.proc.stop() == 0
            assert await server.proc.stop() == 0
        finally:
            await proxy.aclose()
    assert str(proxy.port) not in server.proc.stderr  # the proxy URL is not logged either


async def _probe_socks(port: int, stop: asyncio.Event, failures: list[str]) -> int:
    """Connect to the SOCKS5 port every 50 ms and do the greeting; record every failure."""
    probes = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            writer.write(b"\x05\x01\x00")
            answer = await asyncio.wait_for(reader.readexactly(2), 2)
            writer.close()
            if answer != b"\x05\x00":
                failures.append(f"greeting answered {answer!r}")
        except Exception as exc:
            failures.append(repr(exc))
        probes += 1
        await asyncio.sleep(0.05)
    return probes


async def test_server_restart_socks5_stays_bound_and_traffic_resumes(run: Runner) -> None:
    """Stop ``alknet serve`` and start it again on the same port: the client's SOCKS5 port answers every
    probe (every 50 ms) throughout, a request during the outage gets 0x01 at once, and after the reconnect
    (within the client's backoff) SOCKS5 works again and the -R port is bound again."""
    key = new_keypair()
    port = free_port()
    rport = free_port()
    TARGET_PORTS.add(rport)
    async with Web() as web:
        server = await run.serve("--listen", f"tcp://127.0.0.1:{port}", keys=[key])
        client = await run.connect(server, "-R", f"{rport}:127.0.0.1:{web.port}", key=key)
        await eventually_get(rport, web.body)
        stop = asyncio.Event()
        failures: list[str] = []
        prober = asyncio.ensure_future(_probe_socks(client.socks, stop, failures))
        try:
            assert await server.proc.stop() == 0
            # an idle session gets the server's SSH disconnect (a clean close, not a reset)
            assert await client.proc.wait_line('msg="disconnected"') == (
                'level=INFO msg="disconnected" reason="connection closed"'
            )
            t0 = time.monotonic()
            assert await socks5_reply(client.socks, "127.0.0.1", web.port) == 0x01
            assert time.monotonic() - t0 < 0.5
            rc, _, _ = await direct_get(rport)
            assert rc != 0  # the server, and with it the remote forward, is gone
            await asyncio.sleep(1.5)

            again = await run.serve("--listen", f"tcp://127.0.0.1:{port}", keys=[key])
            assert again.fingerprint == server.fingerprint and again.ports == {"tcp": port}
            ready = time.monotonic()
            await client.proc.wait_line('msg="connected"', count=2, timeout=40)
            resumed = time.monotonic() - ready
            delays = [
                float(m.group(1))
                for line in client.proc.matching('msg="reconnecting"')
                if (m := re.search(r"delay=([0-9.]+)", line))
            ]
            assert delays and resumed <= max(delays) + 2.0, (resumed, delays)
            assert await socks_get(client.socks, f"http://127.0.0.1:{web.port}/") == (0, web.body, "")
            await eventually_get(rport, web.body)  # -R requested again after the reconnect
        finally:
            stop.set()
            probes = await prober
        assert failures == [] and probes > 30, (failures, probes)
        assert await client.proc.stop() == 0
        assert await again.proc.stop() == 0
    first = client.proc.matching('msg="reconnecting"')[0]
    assert "attempt=1 " in first


async def test_per_ip_limit_rejects_the_second_connection(run: Runner) -> None:
    """``--max-connections-per-ip 1``: with one client connected, a second TCP connection from 127.0.0.1 is
    closed before any SSH byte and logged as ``connection rejected``; the first session keeps working."""
    key = new_keypair()
    async with Web() as web:
        server = await run.serve("--listen", "tcp://127.0.0.1:0", "--max-connections-per-ip", "1", keys=[key])
        client = await run.connect(server, key=key)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["tcp"])
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        await server.proc.wait_line(
            'level=INFO msg="connection rejected" remote_addr=127.0.0.1 reason=too_many_connections'
        )
        assert await socks_get(client.socks, f"http://127.0.0.1:{web.port}/") == (0, web.body, "")
        assert len(server.proc.matching('msg="connection opened"')) == 1
        assert await client.proc.stop() == 0
        assert await server.proc.stop() == 0


async def test_auth_attempt_limit_disconnects(run: Runner) -> None:
    """``--max-auth-attempts 2``: ``alknet connect`` with a wrong key is refused (and keeps retrying, one
    attempt per connection); a client offering three wrong keys on one connection is disconnected after the
    second with the ``too_many_auth_attempts`` line; the authorised client is unaffected."""
    good = new_keypair()
    async with Web() as web:
        server = await run.serve("--listen", "tcp://127.0.0.1:0", "--max-auth-attempts", "2", keys=[good])
        client = await run.connect(server, key=good)
        intruder = await run.connect(server, key=new_keypair(), wait_connected=False)
        await intruder.proc.wait_line('msg="connect failed"')
        await intruder.proc.wait_line('msg="reconnecting" attempt=1')
        assert intruder.proc.running

        wrong = [new_keypair().ssh_key for _ in range(3)]
        with pytest.raises((asyncssh.DisconnectError, asyncssh.PermissionDenied)):
            await asyncio.wait_for(
                asyncssh.connect("127.0.0.1", server.ports["tcp"], **client_options(client_keys=wrong)), T
            )
        line = await server.proc.wait_line('msg="connection rejected"')
        assert (
            line == 'level=INFO msg="connection rejected" remote_addr=127.0.0.1 reason=too_many_auth_attempts'
        )
        fps = {k.get_fingerprint() for k in wrong}
        offered = [line for line in server.proc.matching("result=reject") if any(fp in line for fp in fps)]
        assert len(offered) == 2  # the third key was never looked at

        assert await socks_get(client.socks, f"http://127.0.0.1:{web.port}/") == (0, web.body, "")
        assert await intruder.proc.stop() == 0
        assert await client.proc.stop() == 0
        assert await server.proc.stop() == 0


async def test_sighup_adds_a_key_while_a_session_streams(run: Runner) -> None:
    """Client A streams through -L; client B is refused; B's key is appended to authorized_keys and the
    server gets SIGHUP: B logs in on its next retry, and A's stream never notices."""
    a, b = new_keypair(), new_keypair()
    async with Web() as web:
        echo_server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        echo_port = int(echo_server.sockets[0].getsockname()[1])
        TARGET_PORTS.add(echo_port)
        try:
            server = await run.serve("--listen", "tcp://127.0.0.1:0", keys=[a])
            client_a = await run.connect(server, "-L", f"0:127.0.0.1:{echo_port}", key=a)
            reader, writer = await asyncio.open_connection("127.0.0.1", client_a.forwards[0])
            writer.write(b"before\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"before\n"

            client_b = await run.connect(server, key=b, wait_connected=False)
            await client_b.proc.wait_line('msg="connect failed"')
            with open(server.state / "authorized_keys", "a") as fh:
                fh.write(b.line + "\n")
            server.proc.send(signal.SIGHUP)
            await server.proc.wait_line('msg="config reload" result=ok')
            await client_b.proc.wait_line('msg="connected"', timeout=30)
            assert await socks_get(client_b.socks, f"http://127.0.0.1:{web.port}/") == (0, web.body, "")

            writer.write(b"after\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"after\n"
            writer.close()
            assert len(client_a.proc.matching('msg="connected"')) == 1  # A never reconnected
            for proc in (client_a.proc, client_b.proc, server.proc):
                assert await proc.stop() == 0
        finally:
            echo_server.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _drain(reader: asyncio.StreamReader, counter: list[int]) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(262144):
            counter[0] += len(data)


async def _loaded_stream(port: int) -> tuple[asyncio.Task[None], list[int], asyncio.StreamWriter]:
    """Open a connection to the -L port of a Source and read it continuously; returns once 1 MiB arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    counter = [0]
    task = asyncio.ensure_future(_drain(reader, counter))
    deadline = time.monotonic() + 10
    while counter[0] < 1 << 20:
        assert time.monotonic() < deadline and not task.done(), "no data through the tunnel"
        await asyncio.sleep(0.02)
    return task, counter, writer


async def test_sigterm_under_load_exits_0_within_3s(run: Runner) -> None:
    """A transfer runs through -L: SIGTERM to the client, then (with a new client and transfer) SIGTERM to
    the server; each process exits 0 within about 3 s (2 s drain), and the transfer ends."""
    key = new_keypair()
    async with Source() as source:
        server = await run.serve("--listen", "tcp://127.0.0.1:0", keys=[key])
        for victim in ("client", "server"):
            client = await run.connect(server, "-L", f"0:127.0.0.1:{source.port}", key=key)
            task, counter, writer = await _loaded_stream(client.forwards[0])
            proc = client.proc if victim == "client" else server.proc
            t0 = time.monotonic()
            rc = await proc.stop(timeout=10)
            elapsed = time.monotonic() - t0
            assert rc == 0, proc.stderr
            assert elapsed < 3.5, f"{victim} took {elapsed:.2f}s to stop"
            await asyncio.wait_for(task, 5)  # the stream ended with the process
            writer.close()
            assert counter[0] >= 1 << 20
            if victim == "server":
                # under load the reason is "connection closed" or, when the server's socket is closed with
                # unread window adjustments in it, a reset: both end the session, and the client retries
                await client.proc.wait_line('msg="disconnected"')
                assert client.proc.running  # the client outlives its server and keeps retrying
                assert await client.proc.stop() == 0


def test_zz_no_tunnel_target_in_any_captured_stderr() -> None:
    """Across every stderr captured above (servers and clients, DEBUG included): no target host or port."""
    if not STDERRS:
        pytest.skip("no alknet process ran in this session")
    assert len(STDERRS) >= 10
    for name, text in STDERRS:
        for host in TARGET_NAMES:
            assert host not in text, f"{host!r} in the stderr of {name}:\n{text}"
        # a process's own listeners are logged by design (``msg="socks5 listening" addr=127.0.0.1:P``); an
        # ephemeral port reused by a later test's target is not a leak of that target
        own = {int(p) for p in re.findall(r'listening" addr=\S*:(\d+)', text)}
        for port in TARGET_PORTS - own:
            assert not re.search(rf"(?<![0-9A-Za-z]){port}(?![0-9A-Za-z])", text), (
                f"target port {port} in the stderr of {name}:\n{text}"
            )
