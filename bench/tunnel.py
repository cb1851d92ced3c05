#!/usr/bin/env python3
"""Tunnel benchmark: alknet vs stock OpenSSH vs bare asyncssh, side by side in one run (issue 3).

    uv run python bench/tunnel.py            # full run (about 3-4 minutes on a 2-core box)
    uv run python bench/tunnel.py --quick    # smoke run with tiny counts (seconds; numbers meaningless)

What runs (all on 127.0.0.1, every process started, watched and stopped by this script):

- a target server in this process (threads, blocking sockets): uploads are counted and acknowledged, downloads
  are served from memory;
- ``alknet serve`` and ``alknet connect`` (the real CLI: ``python -m alknet.cli``), the client serving SOCKS5
  and one ``-L`` forward to the target;
- ``/usr/sbin/sshd -D`` with a temporary config and ``ssh -N -D ... -L ...`` (OpenSSH);
- a bare asyncssh server and client (``asyncssh.listen``/``asyncssh.connect``, ``forward_local_port`` and
  ``forward_socks``), started from this file with ``--role``;
- two mixed pairs that tell the client side from the server side: ``ssh -L`` -> ``alknet serve`` and
  ``alknet connect -L`` -> ``sshd``.

Everywhere: aes128-gcm@openssh.com, no compression, Ed25519 host and client keys.

Measurements (medians over rounds; the paths alternate inside each round, in a rotated order):

1. bulk MB/s (10^6 bytes/s) per path and direction (up = client to target, down = target to client), with
   the CPU seconds per MiB that the client-side and server-side process trees used;
2. connect+auth latency: one asyncssh client (this process) timing TCP connect start -> authenticated
   connection, against alknet serve, sshd and the bare asyncssh server, interleaved; plus the OpenSSH
   ``ssh`` binary (process start -> ``LocalCommand`` ran, i.e. authenticated) against alknet and sshd;
3. server memory per idle authenticated SSH connection: K connections to a fresh ``alknet serve`` and to a
   fresh bare asyncssh server, VmRSS growth / K; sshd's proportional set size (PSS) per connection is shown
   for context (it forks processes per connection, so VmRSS of one process says nothing there).

Ratio lines (``ratio ...``) compare against the targets of issue 3: throughput >= 0.6x OpenSSH and >= 0.95x
bare asyncssh; connect+auth <= 0.3x sshd; memory <= 1.5x bare asyncssh. They are benchmark targets, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import asyncssh

CIPHER = "aes128-gcm@openssh.com"
#: Logins in the latency and memory phases pin the key exchange, so that every server does the same work
#: (asyncssh would pick mlkem768x25519 against asyncssh-based servers, OpenSSH 9.2 sntrup761x25519 against sshd).
KEX = "curve25519-sha256"
WINDOW = 8 * 1024 * 1024  # what alknet's client asks for on its channels (ssh/client.py CHANNEL_WINDOW)
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh")
HERE = Path(__file__).resolve()
PY = sys.executable
READY_TIMEOUT = 60.0


# ================================================================================ roles (child processes)


def _role_stop() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def role_asyncssh_server(args: argparse.Namespace) -> None:
    """A bare asyncssh server: public-key auth from an authorized_keys file, direct-tcpip forwarded by
    asyncssh itself (``connection_requested`` returns True), the same session settings as alknet serve."""

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def connection_requested(
            self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
        ) -> bool:
            return True

    stop = _role_stop()
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        args.port,
        server_factory=Server,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        encryption_algs=[CIPHER],
        compression_algs=["none"],
        password_auth=False,
        kbdint_auth=False,
        allow_pty=False,
        x11_forwarding=False,
        agent_forwarding=False,
        login_timeout=30,
        keepalive_interval=15,
        keepalive_count_max=3,
        window=WINDOW,
    )
    print("READY", file=sys.stderr, flush=True)
    await stop.wait()
    acceptor.close()


async def role_asyncssh_client(args: argparse.Namespace) -> None:
    """A bare asyncssh client: one connection, ``forward_local_port`` and ``forward_socks``. Channels get the
    same 8 MiB receive window alknet's client asks for (asyncssh's forwarders take the 2 MiB default of
    ``create_connection``, so its keyword default is raised here)."""
    kwdefaults = asyncssh.SSHClientConnection.create_connection.__kwdefaults__
    if kwdefaults is not None and "window" in kwdefaults:
        kwdefaults["window"] = WINDOW
    stop = _role_stop()
    conn = await asyncssh.connect(
        "127.0.0.1",
        args.port,
        username="bench",
        client_keys=[args.identity],
        known_hosts=None,
        config=None,
        agent_path=None,
        preferred_auth="publickey",
        server_host_key_algs=["ssh-ed25519"],
        encryption_algs=[CIPHER],
        compression_algs=["none"],
        keepalive_interval=15,
        keepalive_count_max=3,
        window=WINDOW,
    )
    await conn.forward_local_port("127.0.0.1", args.forward_port, "127.0.0.1", args.target_port)
    await conn.forward_socks("127.0.0.1", args.socks_port)
    print("READY", file=sys.stderr, flush=True)
    await stop.wait()
    conn.close()


# ================================================================================ the lab


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKNET_") and k != "SSH_AUTH_SOCK"}
    env["ALKNET_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Keys:
    path: Path
    key: asyncssh.SSHKey

    @property
    def public_line(self) -> str:
        return self.key.export_public_key("openssh").decode().strip()

    @property
    def fingerprint(self) -> str:
        return str(self.key.get_fingerprint("sha256"))


def _write_key(path: Path, comment: str) -> Keys:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))
    return Keys(path, key)


@dataclass
class Lab:
    root: Path
    children: C.Children = field(default_factory=C.Children)

    def __post_init__(self) -> None:
        self.client = _write_key(self.root / "id_client", "bench client")
        self.alknet_host = _write_key(self.root / "host_alknet", "alknet host")
        self.sshd_host = _write_key(self.root / "host_sshd", "sshd host")
        self.asyncssh_host = _write_key(self.root / "host_asyncssh", "asyncssh host")
        self.authorized = self.root / "authorized_keys"
        self.authorized.write_text(self.client.public_line + "\n")
        self.authorized.chmod(0o600)
        self.known_hosts = self.root / "known_hosts"
        self.user = getpass.getuser()
        self._n = 0

    def _dir(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:02d}-{name}"
        path.mkdir(mode=0o700)
        return path

    # ---------------------------------------------------------------------------------- servers

    def alknet_serve(self, name: str) -> tuple[C.Child, int]:
        state = self._dir(name)
        port = C.free_port()
        argv = [
            PY,
            "-m",
            "alknet.cli",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"tcp://127.0.0.1:{port}",
        ]
        argv += ["--key", str(self.alknet_host.path), "--authorized-keys", str(self.authorized), "--quiet"]
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), port

    def asyncssh_server(self, name: str) -> tuple[C.Child, int]:
        state = self._dir(name)
        port = C.free_port()
        argv = [PY, str(HERE), "--role", "asyncssh-server", "--port", str(port)]
        argv += ["--host-key", str(self.asyncssh_host.path), "--authorized-keys", str(self.authorized)]
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), port

    def sshd(self, name: str) -> tuple[C.Child, int]:
        state = self._dir(name)
        port = C.free_port()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = state / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.sshd_host.path}",
                    f"AuthorizedKeysFile {self.authorized}",
                    "UsePAM no",
                    "StrictModes no",
                    "PidFile none",
                    "UseDNS no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "GatewayPorts no",
                    f"Ciphers {CIPHER}",
                    "Compression no",
                    "MaxStartups 200:30:400",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), port

    # ---------------------------------------------------------------------------------- clients

    def alknet_connect(
        self, name: str, server_port: int, host_fp: str, user: str, target_port: int, socks: bool
    ) -> tuple[C.Child, int, int | None]:
        state = self._dir(name)
        fwd = C.free_port()
        socks_port = C.free_port() if socks else None
        argv = [PY, "-m", "alknet.cli", "connect", "--state-dir", str(state)]
        argv += ["--server", f"127.0.0.1:{server_port}", "--host-key", host_fp, "--user", user]
        argv += ["--identity", str(self.client.path), "-L", f"127.0.0.1:{fwd}:127.0.0.1:{target_port}"]
        argv += ["--socks5", f"127.0.0.1:{socks_port}"] if socks_port else ["--no-socks5"]
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), fwd, socks_port

    def asyncssh_client(self, name: str, server_port: int, target_port: int) -> tuple[C.Child, int, int]:
        state = self._dir(name)
        fwd, socks_port = C.free_port(), C.free_port()
        argv = [PY, str(HERE), "--role", "asyncssh-client", "--port", str(server_port)]
        argv += ["--identity", str(self.client.path), "--forward-port", str(fwd)]
        argv += ["--socks-port", str(socks_port), "--target-port", str(target_port)]
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), fwd, socks_port

    def _ssh_base(self, server_port: int, host: Keys, user: str) -> list[str]:
        assert SSH is not None
        line = f"[127.0.0.1]:{server_port} {host.public_line}\n"
        with open(self.known_hosts, "a") as fh:
            fh.write(line)
        return [
            SSH,
            "-F",
            "/dev/null",
            "-N",
            "-p",
            str(server_port),
            "-i",
            str(self.client.path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            f"Ciphers={CIPHER}",
            "-o",
            "Compression=no",
            "-o",
            f"KexAlgorithms={KEX}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ConnectTimeout=10",
            "-l",
            user,
        ]

    def ssh_forward(
        self, name: str, server_port: int, host: Keys, user: str, target_port: int, socks: bool
    ) -> tuple[C.Child, int, int | None]:
        state = self._dir(name)
        fwd = C.free_port()
        socks_port = C.free_port() if socks else None
        argv = self._ssh_base(server_port, host, user)
        argv += ["-L", f"127.0.0.1:{fwd}:127.0.0.1:{target_port}"]
        if socks_port:
            argv += ["-D", f"127.0.0.1:{socks_port}"]
        argv.append("127.0.0.1")
        return self.children.spawn(name, argv, log=state / "stderr.log", env=_env(state)), fwd, socks_port

    def ssh_login_time(self, server_port: int, host: Keys, user: str, timeout: float = 15.0) -> float:
        """Seconds from starting ``ssh`` to its ``LocalCommand`` (run once the connection is authenticated)."""
        argv = self._ssh_base(server_port, host, user)
        argv += ["-o", "PermitLocalCommand=yes", "-o", "LocalCommand=echo authenticated", "127.0.0.1"]
        t0 = time.perf_counter()
        child = self.children.spawn("ssh-login", argv, env=_env(self.root), stdout=subprocess.PIPE)
        try:
            assert child.proc.stdout is not None
            fd = child.proc.stdout.fileno()
            buf = b""
            deadline = t0 + timeout
            while b"authenticated" not in buf:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError("ssh did not authenticate in time")
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    part = os.read(fd, 4096)
                    if not part:
                        raise RuntimeError(f"ssh exited ({child.proc.wait()}) before authenticating")
                    buf += part
            return time.perf_counter() - t0
        finally:
            self.children.stop(child)


def _ready(child: C.Child, *, port: int | None = None, log_text: str | None = None) -> None:
    if log_text is not None:
        C.wait_log(child, log_text, READY_TIMEOUT)
    if port is not None:
        C.wait_port(port, READY_TIMEOUT, child)


# ================================================================================ throughput


@dataclass
class TunnelPath:
    key: str
    label: str
    entry_port: int
    socks: bool
    client: C.Child | None
    server: C.Child | None
    mbps: dict[str, list[float]] = field(default_factory=lambda: {"up": [], "down": []})
    cpu_client: dict[str, list[float]] = field(default_factory=lambda: {"up": [], "down": []})
    cpu_server: dict[str, list[float]] = field(default_factory=lambda: {"up": [], "down": []})
    busy: dict[str, list[float]] = field(default_factory=lambda: {"up": [], "down": []})


def _measure(path: TunnelPath, direction: str, nbytes: int, target_port: int) -> None:
    client_pids = C.tree_pids(path.client.pid) if path.client else []
    server_pids = C.tree_pids(path.server.pid) if path.server else []
    c0, s0 = C.cpu_seconds(client_pids), C.cpu_seconds(server_pids)
    m0 = C.machine_ticks()
    seconds = C.transfer(path.entry_port, direction, nbytes, socks_target=target_port if path.socks else None)
    m1 = C.machine_ticks()
    c1, s1 = C.cpu_seconds(client_pids), C.cpu_seconds(server_pids)
    path.busy[direction].append(C.busy_percent(m0, m1))
    mib = nbytes / C.MIB
    path.mbps[direction].append(nbytes / seconds / 1e6)
    if path.client:
        path.cpu_client[direction].append((c1 - c0) / mib * 1000)
    if path.server:
        path.cpu_server[direction].append((s1 - s0) / mib * 1000)


def run_throughput(
    lab: Lab, target: C.TargetServer, args: argparse.Namespace
) -> tuple[list[TunnelPath], dict[str, int]]:
    """Start every tunnel, then move ``--mib`` through each path and direction per round. Returns the paths
    (with their samples) and the server ports (for the latency phase, which reuses the running servers)."""
    have_openssh = SSH is not None and os.access(SSHD, os.X_OK)
    # servers first (in parallel), then the clients that need them
    a_srv, a_port = lab.alknet_serve("alknet-serve")
    y_srv, y_port = lab.asyncssh_server("asyncssh-server")
    o_srv = None
    if have_openssh:
        o_srv, o_port = lab.sshd("sshd")
    _ready(a_srv, port=a_port)
    _ready(y_srv, log_text="READY", port=y_port)
    if o_srv:
        _ready(o_srv, port=o_port)

    a_cli, a_fwd, a_socks = lab.alknet_connect(
        "alknet-connect", a_port, lab.alknet_host.fingerprint, "alknet", target.port, socks=True
    )
    y_cli, y_fwd, y_socks = lab.asyncssh_client("asyncssh-client", y_port, target.port)
    started: list[tuple[C.Child, str | None, int]] = [
        (a_cli, 'msg="connected"', a_fwd),
        (y_cli, "READY", y_fwd),
    ]
    paths = [
        TunnelPath("direct", "direct TCP (no tunnel)", target.port, False, None, None),
        TunnelPath("alknet-socks", "alknet connect SOCKS5 -> alknet serve", a_socks or 0, True, a_cli, a_srv),
        TunnelPath("alknet-L", "alknet connect -L -> alknet serve", a_fwd, False, a_cli, a_srv),
        TunnelPath(
            "asyncssh-socks", "asyncssh forward_socks -> asyncssh server", y_socks, True, y_cli, y_srv
        ),
        TunnelPath(
            "asyncssh-L", "asyncssh forward_local_port -> asyncssh server", y_fwd, False, y_cli, y_srv
        ),
    ]
    if have_openssh and o_srv:
        o_cli, o_fwd, o_socks = lab.ssh_forward(
            "ssh", o_port, lab.sshd_host, lab.user, target.port, socks=True
        )
        m1_cli, m1_fwd, _ = lab.ssh_forward(
            "ssh-to-alknet", a_port, lab.alknet_host, "alknet", target.port, socks=False
        )
        m2_cli, m2_fwd, _ = lab.alknet_connect(
            "alknet-connect-to-sshd", o_port, lab.sshd_host.fingerprint, lab.user, target.port, socks=False
        )
        started += [(o_cli, None, o_fwd), (m1_cli, None, m1_fwd), (m2_cli, 'msg="connected"', m2_fwd)]
        paths += [
            TunnelPath("openssh-D", "ssh -D -> sshd", o_socks or 0, True, o_cli, o_srv),
            TunnelPath("openssh-L", "ssh -L -> sshd", o_fwd, False, o_cli, o_srv),
            TunnelPath(
                "mixed-ssh-alknet", "ssh -L -> alknet serve (server side only)", m1_fwd, False, m1_cli, a_srv
            ),
            TunnelPath(
                "mixed-alknet-sshd",
                "alknet connect -L -> sshd (client side only)",
                m2_fwd,
                False,
                m2_cli,
                o_srv,
            ),
        ]
    for child, text, port in started:
        _ready(child, log_text=text, port=port)

    nbytes = int(args.mib * C.MIB)
    # warm-up: one small transfer each way through every path (also proves every path works)
    for path in paths:
        for direction in args.directions:
            C.transfer(
                path.entry_port,
                direction,
                min(nbytes, C.MIB),
                socks_target=target.port if path.socks else None,
            )
    for r in range(args.rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        dirs = list(args.directions) if r % 2 == 0 else list(reversed(args.directions))
        for path in order:
            for direction in dirs:
                _measure(path, direction, nbytes, target.port)
        _progress(f"throughput round {r + 1}/{args.rounds} done")
    ports = {"alknet": a_port, "asyncssh": y_port}
    if o_srv:
        ports["sshd"] = o_port
    return paths, ports


# ================================================================================ latency


async def _asyncssh_login(port: int, user: str, key: asyncssh.SSHKey) -> float:
    t0 = time.perf_counter()
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        username=user,
        client_keys=[key],
        known_hosts=None,
        config=None,
        agent_path=None,
        preferred_auth="publickey",
        server_host_key_algs=["ssh-ed25519"],
        encryption_algs=[CIPHER],
        compression_algs=["none"],
        kex_algs=[KEX],
        connect_timeout=15,
    )
    seconds = time.perf_counter() - t0
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), 5)
    return seconds


async def _latency_async(
    targets: list[tuple[str, int, str]], key: asyncssh.SSHKey, samples: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    for _name, port, user in targets:  # warm-up (first connections pay for imports and caches)
        await _asyncssh_login(port, user, key)
    for i in range(samples):
        order = targets[i % len(targets) :] + targets[: i % len(targets)]
        for name, port, user in order:
            out[name].append(await _asyncssh_login(port, user, key) * 1000)
            await asyncio.sleep(0.02)
    return out


def run_latency(lab: Lab, ports: dict[str, int], args: argparse.Namespace) -> dict[str, list[float]]:
    targets = [("alknet", ports["alknet"], "alknet"), ("asyncssh", ports["asyncssh"], "bench")]
    if "sshd" in ports:
        targets.append(("sshd", ports["sshd"], lab.user))
    result = asyncio.run(_latency_async(targets, lab.client.key, args.latency_samples))
    if "sshd" in ports and SSH is not None:
        ssh_targets = [
            ("ssh->alknet", ports["alknet"], lab.alknet_host, "alknet"),
            ("ssh->sshd", ports["sshd"], lab.sshd_host, lab.user),
        ]
        for name, *_ in ssh_targets:
            result[name] = []
        for _name, port, host, user in ssh_targets:
            lab.ssh_login_time(port, host, user)  # warm-up
        for i in range(args.ssh_latency_samples):
            order = ssh_targets if i % 2 == 0 else list(reversed(ssh_targets))
            for name, port, host, user in order:
                result[name].append(lab.ssh_login_time(port, host, user) * 1000)
    _progress("latency done")
    return result


# ================================================================================ memory


async def _open_sessions(
    port: int, user: str, key: asyncssh.SSHKey, count: int, parallel: int
) -> list[asyncssh.SSHClientConnection]:
    sem = asyncio.Semaphore(parallel)
    conns: list[asyncssh.SSHClientConnection] = []

    async def one() -> None:
        async with sem:
            conn = await asyncssh.connect(
                "127.0.0.1",
                port,
                username=user,
                client_keys=[key],
                known_hosts=None,
                config=None,
                agent_path=None,
                preferred_auth="publickey",
                server_host_key_algs=["ssh-ed25519"],
                encryption_algs=[CIPHER],
                compression_algs=["none"],
                kex_algs=[KEX],
                connect_timeout=30,
            )
            conns.append(conn)

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=30 + count * 0.5)
    except BaseException:
        await _close_sessions(conns)
        raise
    return conns


async def _close_sessions(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in conns:
        conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True), 30)


async def _memory_one(
    pid: int, port: int, user: str, key: asyncssh.SSHKey, count: int, measure: Callable[[int], int]
) -> float:
    warm = await _open_sessions(port, user, key, 5, 5)
    conns: list[asyncssh.SSHClientConnection] = []
    try:
        await asyncio.sleep(0.5)
        before, fds = measure(pid), _fd_count(pid)
        conns = await _open_sessions(port, user, key, count, 16)
        await asyncio.sleep(1.0)
        after, fds_after = measure(pid), _fd_count(pid)
        if measure is C.rss_kib and fds_after - fds < count:  # every connection must still be held
            raise RuntimeError(f"server {pid} holds only {fds_after - fds} of {count} new connections")
        if sum(1 for c in conns if c.is_closed()) > 0:
            raise RuntimeError("some benchmark connections were closed before the memory reading")
        return (after - before) / count
    finally:
        await _close_sessions(conns + warm)


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tree_pss(pid: int) -> int:
    return sum(C.pss_kib(p) for p in C.tree_pids(pid))


def run_memory(lab: Lab, args: argparse.Namespace) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"alknet": [], "asyncssh": [], "sshd_pss": []}
    key = lab.client.key
    for r in range(args.mem_rounds):
        a_srv, a_port = lab.alknet_serve(f"mem-alknet-{r}")
        y_srv, y_port = lab.asyncssh_server(f"mem-asyncssh-{r}")
        try:
            _ready(a_srv, port=a_port)
            _ready(y_srv, log_text="READY", port=y_port)
            runs = [("alknet", a_srv, a_port, "alknet"), ("asyncssh", y_srv, y_port, "bench")]
            if r % 2:
                runs.reverse()
            for name, child, port, user in runs:
                out[name].append(
                    asyncio.run(_memory_one(child.pid, port, user, key, args.sessions, C.rss_kib))
                )
        finally:
            lab.children.stop(a_srv)
            lab.children.stop(y_srv)
        _progress(f"memory round {r + 1}/{args.mem_rounds} done")
    if args.sshd_sessions > 0 and SSH is not None and os.access(SSHD, os.X_OK):
        o_srv, o_port = lab.sshd("mem-sshd")
        try:
            _ready(o_srv, port=o_port)
            out["sshd_pss"].append(
                asyncio.run(_memory_one(o_srv.pid, o_port, lab.user, key, args.sshd_sessions, _tree_pss))
            )
        finally:
            lab.children.stop(o_srv)
    return out


# ================================================================================ report


def _progress(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "MEETS" if ok else "MISSES"


def report(
    args: argparse.Namespace,
    paths: list[TunnelPath],
    latency: dict[str, list[float]],
    memory: dict[str, list[float]],
    started: float,
) -> dict[str, Any]:
    out: list[str] = []
    by_key = {p.key: p for p in paths}

    def med(key: str, d: str) -> float | None:
        return C.median(by_key[key].mbps[d]) if key in by_key and by_key[key].mbps[d] else None

    machine = C.machine_notes()
    versions = {
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "cryptography": _dist_version("cryptography"),
        "openssh": _openssh_version(),
        "alknet": _dist_version("alknet-core"),
    }
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out.append(f"# alknet tunnel bench, {date}")
    out.append(
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['mem_gib']} GiB, "
        f"Linux {machine['kernel']}, load {machine['load_1m']}"
    )
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out.append(f"cipher {CIPHER}, no compression; logins pin kex {KEX}")
    out.append("")
    out.append(f"## Bulk throughput: {args.mib:g} MiB per transfer, {args.rounds} rounds, median (min-max)")
    rows = []
    for p in paths:
        for d in args.directions:
            vals = p.mbps[d]
            cc, cs = p.cpu_client[d], p.cpu_server[d]
            rows.append(
                [
                    p.label,
                    d,
                    f"{C.fmt(C.median(vals))} ({C.fmt(min(vals))}-{C.fmt(max(vals))})" if vals else "n/a",
                    C.fmt(C.median(cc), 2) if cc else "-",
                    C.fmt(C.median(cs), 2) if cs else "-",
                    C.fmt(C.median(p.busy[d]), 0),
                ]
            )
    headers = ["path", "dir", "MB/s", "client CPU ms/MiB", "server CPU ms/MiB", "machine busy %"]
    out.append(C.table(headers, rows))
    out.append("")

    lat = {k: C.median(v) for k, v in latency.items() if v}
    out.append(f"## Connect + auth latency, ms (asyncssh client: {args.latency_samples} samples per server)")
    rows = []
    for k, v in latency.items():
        if v:
            s = sorted(v)
            rows.append(
                [
                    k,
                    C.fmt(C.median(s), 2),
                    C.fmt(s[0], 2),
                    C.fmt(s[min(len(s) - 1, int(len(s) * 0.9))], 2),
                    str(len(s)),
                ]
            )
    out.append(C.table(["server (client)", "median", "min", "p90", "n"], rows))
    out.append("")

    mem = {k: C.median(v) for k, v in memory.items() if v}
    out.append(
        f"## Server memory per idle authenticated connection, KiB ({args.sessions} connections, {args.mem_rounds} rounds)"
    )
    rows = [
        [
            "alknet serve (VmRSS growth)",
            C.fmt(mem.get("alknet")),
            " ".join(C.fmt(x) for x in memory["alknet"]),
        ],
        [
            "bare asyncssh server (VmRSS growth)",
            C.fmt(mem.get("asyncssh")),
            " ".join(C.fmt(x) for x in memory["asyncssh"]),
        ],
    ]
    if memory.get("sshd_pss"):
        rows.append(
            [
                f"sshd, context ({args.sshd_sessions} conns, PSS of its process tree)",
                C.fmt(mem["sshd_pss"]),
                "",
            ]
        )
    out.append(C.table(["server", "median", "per round"], rows))
    out.append("")

    ratios: list[dict[str, Any]] = []

    def add(what: str, a: float | None, b: float | None, target: float | None, higher: bool = True) -> None:
        value = C.ratio(a, b)
        entry: dict[str, Any] = {"what": what, "value": value}
        if target is not None:
            entry["target"] = f"{'>=' if higher else '<='} {target:g}"
            entry["verdict"] = _verdict(value, target, higher)
        ratios.append(entry)

    for d in args.directions:
        add(f"throughput alknet/OpenSSH     -L {d}", med("alknet-L", d), med("openssh-L", d), 0.6)
        add(f"throughput alknet/OpenSSH  SOCKS {d}", med("alknet-socks", d), med("openssh-D", d), 0.6)
        add(f"throughput alknet/asyncssh    -L {d}", med("alknet-L", d), med("asyncssh-L", d), 0.95)
        add(f"throughput alknet/asyncssh SOCKS {d}", med("alknet-socks", d), med("asyncssh-socks", d), 0.95)

    def cpu(key: str, d: str) -> float | None:
        p = by_key.get(key)
        if p is None or not p.cpu_client[d] or not p.cpu_server[d]:
            return None
        return C.median(p.cpu_client[d]) + C.median(p.cpu_server[d])

    for d in args.directions:
        add(
            f"CPU per MiB (client+server) alknet/OpenSSH  -L {d}",
            cpu("alknet-L", d),
            cpu("openssh-L", d),
            None,
        )
        add(
            f"CPU per MiB (client+server) alknet/asyncssh -L {d}",
            cpu("alknet-L", d),
            cpu("asyncssh-L", d),
            None,
        )
    add("connect+auth alknet/sshd", lat.get("alknet"), lat.get("sshd"), 0.3, higher=False)
    add("connect+auth alknet/asyncssh", lat.get("alknet"), lat.get("asyncssh"), None)
    add("connect+auth ssh binary: alknet/sshd", lat.get("ssh->alknet"), lat.get("ssh->sshd"), None)
    add("memory/session alknet/asyncssh", mem.get("alknet"), mem.get("asyncssh"), 1.5, higher=False)
    out.append("## Ratios (alknet / baseline) against the issue 3 targets")
    width = max(len(r["what"]) for r in ratios)
    for r in ratios:
        tail = f"  target {r['target']}: {r['verdict']}" if "target" in r else "  (context, no target)"
        out.append(f"ratio {r['what']:<{width}}  {C.fmt(r['value'], 2):>5}{tail}")
    out.append("")
    out.append(f"total {time.monotonic() - started:.0f} s")
    print("\n".join(out), flush=True)
    return {
        "date_utc": date,
        "machine": machine,
        "versions": versions,
        "args": {k: v for k, v in vars(args).items() if k != "role"},
        "throughput": {
            p.key: {
                "label": p.label,
                **{f"mbps_{d}": p.mbps[d] for d in args.directions},
                **{f"cpu_client_ms_per_mib_{d}": p.cpu_client[d] for d in args.directions},
                **{f"cpu_server_ms_per_mib_{d}": p.cpu_server[d] for d in args.directions},
                **{f"machine_busy_percent_{d}": p.busy[d] for d in args.directions},
            }
            for p in paths
        },
        "latency_ms": latency,
        "memory_kib_per_session": memory,
        "ratios": ratios,
    }


def _dist_version(name: str) -> str:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version(name)
    return "unknown"


def _openssh_version() -> str:
    if SSH is None:
        return "missing"
    with contextlib.suppress(Exception):
        text = subprocess.run([SSH, "-V"], capture_output=True, text=True, timeout=5).stderr.strip()
        return text.split(",")[0].removeprefix("OpenSSH_")
    return "unknown"


# ================================================================================ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mib", type=float, default=128, help="MiB per bulk transfer (default 128)")
    p.add_argument(
        "--rounds",
        type=int,
        default=9,
        help="throughput rounds; each moves --mib once per path and direction (default 9)",
    )
    p.add_argument(
        "--directions", default="up,down", help="comma-separated: up (client to target), down (default both)"
    )
    p.add_argument("--latency-samples", type=int, default=40, help="asyncssh logins per server (default 40)")
    p.add_argument(
        "--ssh-latency-samples", type=int, default=15, help="ssh-binary logins per server (default 15)"
    )
    p.add_argument(
        "--sessions", type=int, default=500, help="idle connections per memory round (default 500)"
    )
    p.add_argument("--mem-rounds", type=int, default=3, help="memory rounds, fresh servers each (default 3)")
    p.add_argument(
        "--sshd-sessions",
        type=int,
        default=50,
        help="sshd connections for the PSS context row (default 50; 0 = skip)",
    )
    p.add_argument("--json", metavar="PATH", help="also write all samples and ratios as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument(
        "--quick", action="store_true", help="tiny counts for a smoke run (numbers are meaningless)"
    )
    # child roles (internal)
    p.add_argument("--role", choices=("asyncssh-server", "asyncssh-client"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--host-key", help=argparse.SUPPRESS)
    p.add_argument("--authorized-keys", help=argparse.SUPPRESS)
    p.add_argument("--identity", help=argparse.SUPPRESS)
    p.add_argument("--forward-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--socks-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--target-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.rounds, args.latency_samples, args.ssh_latency_samples = 2, 2, 3, 2
        args.sessions, args.mem_rounds, args.sshd_sessions = 5, 1, 3
    args.directions = [d for d in args.directions.split(",") if d]
    if not args.directions or any(d not in ("up", "down") for d in args.directions):
        p.error("--directions takes up, down or up,down")
    for name in ("rounds", "latency_samples", "sessions", "mem_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.mib <= 4096:
        p.error("--mib must be in (0, 4096]")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "asyncssh-server":
        asyncio.run(role_asyncssh_server(args))
        return 0
    if args.role == "asyncssh-client":
        asyncio.run(role_asyncssh_client(args))
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (&)
    C.raise_fd_limit()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="alknet-bench-"))
    lab = Lab(root)
    target = C.TargetServer()
    try:
        if SSH is None or not os.access(SSHD, os.X_OK):
            _progress("OpenSSH ssh/sshd not found: the OpenSSH rows are skipped")
        paths, ports = run_throughput(lab, target, args)
        latency = run_latency(lab, ports, args)
        lab.children.stop_all()  # the tunnel processes are done; memory rounds start fresh servers
        memory = run_memory(lab, args)
        result = report(args, paths, latency, memory, started)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        lab.children.stop_all()
        target.close()
        if args.keep:
            print(f"# kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
