"""Interop: the stock OpenSSH client against ``alknet serve`` run as a real process (transport-and-ssh.md §2,
§7, §13; auth-and-config.md §3-§4), and ``alknet connect`` next to it.

- ``ssh -N -D`` and ``ssh -N -L``/``-R`` log in with a key from the server's ``authorized_keys``; curl gets
  the page through each, and through ``alknet connect`` to the same server.
- ``ssh-keygen -s`` certificates through ``serve --cert-authority``: valid accepted; expired and
  no-principals refused.
- password / keyboard-interactive: ``Permission denied (publickey)``; exec and a shell are refused while
  ``ssh -N -L`` with the same key works.
- ``alknet connect`` ignores ``~/.ssh`` (config with ``Port 1`` / ``User nobody``, a conflicting
  known_hosts, an agent socket variable).

The stock client always runs with ``-F /dev/null``, a known_hosts file of the test, ``IdentitiesOnly`` and no
agent, so nothing of the machine's own OpenSSH setup is used. Skipped only when ``ssh`` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from proc_kit import ALKNET, Proc, clean_env
from proc_kit import Runner as ProcRunner
from ssh_server_kit import KeyPair, free_port, new_keypair, sign_certificate

from alknet.core.auth.keys import write_keypair

pytestmark = pytest.mark.timeout(120)

SSH = shutil.which("ssh")
BODY = b"page served behind alknet\n"

needs_ssh = pytest.mark.skipif(SSH is None, reason="ssh (Debian package openssh-client) is not installed")


@dataclass
class Server:
    proc: Proc
    state: Path
    fingerprint: str
    port: int


class Runner(ProcRunner):
    async def serve(self, *args: str, keys: Sequence[KeyPair] = ()) -> Server:
        home = self.dir("server")
        ak = home / "authorized_keys"
        ak.write_text("".join(k.line + "\n" for k in keys))
        ak.chmod(0o600)
        proc = self.track(
            Proc(
                [*ALKNET, "serve", "--log-time", "never", "--listen", "tcp://127.0.0.1:0", *args],
                clean_env(home, keep_agent=False),
                name="serve",
            )
        )
        await proc.start()
        await proc.wait_line('msg="server ready"')
        banner = "\n".join(proc.out)
        fp = re.search(r"host key    (SHA256:\S+)", banner)
        port = re.search(r"listening   tcp 127\.0\.0\.1:(\d+)", banner)
        assert fp and port, banner
        return Server(proc, home, fp.group(1), int(port.group(1)))

    async def ssh(self, server: Server, key: Path, *args: str) -> Proc:
        """A long-running stock ``ssh -N`` with the given forwarding options."""
        proc = self.track(Proc([*ssh_args(self.tmp, server.port, key), "-N", *args, "127.0.0.1"], name="ssh"))
        return await proc.start()


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Runner]:
    runner = Runner(tmp_path)
    try:
        yield runner
    finally:
        await runner.aclose()


def ssh_args(
    tmp: Path, port: int, key: Path | None, *options: str, user: str = "alknet", log_level: str = "ERROR"
) -> list[str]:
    """The stock client, isolated from the machine's OpenSSH setup (config, known_hosts, agent)."""
    assert SSH is not None
    args = [
        SSH,
        "-F",
        "/dev/null",
        "-o",
        f"UserKnownHostsFile={tmp / 'ssh_known_hosts'}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        f"LogLevel={log_level}",
        "-p",
        str(port),
        "-l",
        user,
        *options,
    ]
    if key is not None:
        args += ["-i", str(key)]
    return args


async def run_once(args: Sequence[str], timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@contextlib.asynccontextmanager
async def web() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


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


async def eventually(
    port: int, via_socks: bool, url: str, ssh: Proc | None = None, timeout: float = 15.0
) -> None:
    """Poll until the page arrives: through SOCKS5 on ``port`` (``url``), or at ``http://127.0.0.1:port/``."""
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes, str] = (0, b"", "")
    while time.monotonic() < deadline:
        if ssh is not None:
            assert ssh.running, f"ssh exited: {ssh.stderr}"
        if via_socks:
            last = await curl("--socks5-hostname", f"127.0.0.1:{port}", url)
        else:
            last = await curl("--noproxy", "*", f"http://127.0.0.1:{port}/")
        if last[:2] == (0, BODY):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no page through port {port}: {last}")


# ------------------------------------------------------------------------------------------------ tests


@needs_ssh
async def test_stock_ssh_d_l_r_and_alknet_connect_against_alknet_serve(run: Runner, tmp_path: Path) -> None:
    key = new_keypair()
    path = key.write(tmp_path, "id_ed25519")
    async with web() as page:
        server = await run.serve(keys=[key])

        socks = free_port()
        ssh_d = await run.ssh(server, path, "-D", f"127.0.0.1:{socks}")
        await eventually(socks, True, f"http://localhost:{page}/", ssh_d)
        assert await curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://127.0.0.1:{page}/") == (
            0,
            BODY,
            "",
        )

        lport, rport = free_port(), free_port()
        ssh_lr = await run.ssh(
            server,
            path,
            "-L",
            f"127.0.0.1:{lport}:localhost:{page}",
            "-R",
            f"127.0.0.1:{rport}:127.0.0.1:{page}",
        )
        await eventually(lport, False, "", ssh_lr)
        await eventually(rport, False, "", ssh_lr)

        # stock ssh recorded the host key the banner printed
        known = subprocess.run(
            ["ssh-keygen", "-lf", str(tmp_path / "ssh_known_hosts")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert server.fingerprint in known and f"[127.0.0.1]:{server.port}" in known

        # alknet connect against the same server, side by side with the stock clients
        home = run.dir("client")
        write_keypair(home / "id_ed25519", key.key, "same key")
        client = run.track(
            Proc(
                [
                    *ALKNET,
                    "connect",
                    "--log-time",
                    "never",
                    "--server",
                    f"127.0.0.1:{server.port}",
                    "--host-key",
                    server.fingerprint,
                    "-D",
                    "127.0.0.1:0",
                ],
                clean_env(home, keep_agent=False),
                name="connect",
            )
        )
        await client.start()
        await client.wait_line('msg="connected"')
        alk_socks = int(client.matching('msg="socks5 listening"')[0].rpartition(":")[2])
        assert await curl("--socks5-hostname", f"127.0.0.1:{alk_socks}", f"http://localhost:{page}/") == (
            0,
            BODY,
            "",
        )

        assert ssh_d.running and ssh_lr.running
        assert await client.stop() == 0
        await ssh_d.stop()
        await ssh_lr.stop()
        assert await server.proc.stop() == 0
    assert len(server.proc.matching(f"key_fingerprint={key.fingerprint} result=accept")) == 3
    assert str(page) not in server.proc.stderr and str(rport) not in server.proc.stderr


@needs_ssh
async def test_ssh_keygen_certificates_via_cert_authority(run: Runner, tmp_path: Path) -> None:
    """``serve --cert-authority ca.pub``: a certificate for principal ``alknet`` with port forwarding logs in
    and forwards; an expired one and one without principals get ``Permission denied (publickey)``."""
    ca = new_keypair("ca")
    ca.write(tmp_path, "ca")
    good, expired, nobody = new_keypair("good"), new_keypair("expired"), new_keypair("nobody")
    sign_certificate(ca, good, tmp_path, name="good")
    sign_certificate(ca, expired, tmp_path, name="expired", validity="20200101:20200102")
    sign_certificate(ca, nobody, tmp_path, name="nobody", principals=None)
    assert (tmp_path / "good-cert.pub").exists()
    async with web() as page:
        server = await run.serve("--cert-authority", str(tmp_path / "ca.pub"))

        for name in ("expired", "nobody"):
            code, _, err = await run_once(
                [*ssh_args(tmp_path, server.port, tmp_path / name), "-N", "127.0.0.1"]
            )
            assert code == 255 and "Permission denied (publickey)" in err, (name, err)

        lport = free_port()
        ssh = await run.ssh(server, tmp_path / "good", "-L", f"127.0.0.1:{lport}:127.0.0.1:{page}")
        await eventually(lport, False, "", ssh)
        await ssh.stop()
        assert await server.proc.stop() == 0
    accepted = server.proc.matching("result=accept")
    assert len(accepted) == 1 and f"key_fingerprint={good.fingerprint}" in accepted[0]
    for refused in (expired, nobody):
        assert f"key_fingerprint={refused.fingerprint} result=accept" not in server.proc.stderr


@needs_ssh
async def test_password_exec_and_shell_refused_while_port_forwarding_works(
    run: Runner, tmp_path: Path
) -> None:
    key = new_keypair()
    path = key.write(tmp_path, "id_ed25519")
    async with web() as page:
        server = await run.serve(keys=[key])

        pw = ssh_args(
            tmp_path,
            server.port,
            None,
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        )
        code, _, err = await run_once([*pw, "127.0.0.1", "true"])
        assert code == 255 and "Permission denied (publickey)" in err, err

        refused = "open failed: administratively prohibited: session channels are not supported"
        for label, extra, command in (
            ("exec", (), ["true"]),
            ("shell", ("-T",), []),
            ("shell with pty", ("-tt",), []),
        ):
            args = ssh_args(tmp_path, server.port, path, *extra, log_level="INFO")
            code, out, err = await run_once([*args, "127.0.0.1", *command])
            assert code == 255 and out == "" and refused in err, (label, code, err)
        assert server.proc.running

        lport = free_port()
        ssh = await run.ssh(server, path, "-L", f"127.0.0.1:{lport}:127.0.0.1:{page}")
        await eventually(lport, False, "", ssh)
        await ssh.stop()
        assert await server.proc.stop() == 0
    assert len(server.proc.matching(f"key_fingerprint={key.fingerprint} result=accept")) == 4


async def test_alknet_connect_ignores_home_ssh(run: Runner, tmp_path: Path) -> None:
    """HOME/.ssh/config says ``Port 1`` and ``User nobody`` for every host, HOME/.ssh/known_hosts has a
    different key for the server, SSH_AUTH_SOCK points at nothing: ``alknet connect --server
    127.0.0.1:<port>`` (trust on first use in its own state dir) connects as ``alknet`` all the same."""
    key = new_keypair()
    fake_home = tmp_path / "home"
    dot_ssh = fake_home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700)
    (dot_ssh / "config").write_text("Host *\n    Port 1\n    User nobody\n    IdentityFile ~/.ssh/missing\n")
    async with web() as page:
        server = await run.serve(keys=[key])
        other = new_keypair().line.split()
        (dot_ssh / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {other[0]} {other[1]}\n")
        home = run.dir("client")
        write_keypair(home / "id_ed25519", key.key, "client")
        env = clean_env(
            home, keep_agent=False, HOME=str(fake_home), SSH_AUTH_SOCK=str(tmp_path / "no-agent.sock")
        )
        client = run.track(
            Proc(
                [
                    *ALKNET,
                    "connect",
                    "--log-time",
                    "never",
                    "--server",
                    f"127.0.0.1:{server.port}",
                    "-D",
                    "127.0.0.1:0",
                ],
                env,
                name="connect",
            )
        )
        await client.start()
        await client.wait_line('msg="connected"')
        socks = int(client.matching('msg="socks5 listening"')[0].rpartition(":")[2])
        assert await curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://127.0.0.1:{page}/") == (
            0,
            BODY,
            "",
        )
        assert await client.stop() == 0
        assert await server.proc.stop() == 0
    assert 'msg="new host key trusted on first use"' in client.stderr
    host_key_b64 = (server.state / "host_key.pub").read_text().split()[1]
    assert (home / "known_hosts").read_text().split() == [
        f"[127.0.0.1]:{server.port}",
        "ssh-ed25519",
        host_key_b64,
    ]
    assert f'user="alknet" key_fingerprint={key.fingerprint} result=accept' in server.proc.stderr
    assert "nobody" not in server.proc.stderr
