"""fail2ban against a live server's real stderr (auth-and-config.md §9).

A real ``SshServer`` runs in a child process with the logfmt handler on its stderr, which goes to a file. From
127.0.0.1 the test makes one accepted login, three rejected keys, one attempt with a hostile user name, one
``too_many_auth_attempts`` disconnect and one ``too_many_connections`` rejection. ``fail2ban-regex -o ip
<file> contrib/fail2ban/filter.d/alknet.conf`` must print 127.0.0.1 exactly once per reject line plus once for
the ``too_many_auth_attempts`` line, never 192.0.2.1; the same file without ``time=`` fields (the journald
form) gives the same count.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import T, client_options, new_keypair

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib" / "fail2ban" / "filter.d" / "alknet.conf"
HOSTILE = 'x" remote_addr=192.0.2.1 y="'

SERVER = r"""
import asyncio, sys
from alknet.core import logfmt
from alknet.core.auth.keys import generate_private_key
from alknet.core.config.dynamic import RateLimits
from alknet.core.config.reloader import ConfigReloader, build_dynamic
from alknet.core.config.static import ListenerSpec
from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions

async def main():
    logfmt.setup_logging("info", "auto")
    loaded = build_dynamic(
        sys.argv[1], rate_limits=RateLimits(max_connections_per_ip=2, max_auth_attempts=4)
    )
    options = SshServerOptions(
        host_key=generate_private_key(),
        listeners=(ServerListener(ListenerSpec(kind="tcp", host="127.0.0.1", port=0)),),
    )
    server = SshServer(options, ConfigReloader.from_loaded(loaded))
    await server.start()
    print(server.listen_addrs[0].rpartition(":")[2], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close(drain=0.1)

asyncio.run(main())
"""


def _fail2ban_regex() -> str:
    exe = shutil.which("fail2ban-regex")
    if exe is None:
        pytest.skip("fail2ban-regex not installed (Debian package fail2ban)")
    return exe


def _matched_ips(exe: str, log: Path) -> list[str]:
    proc = subprocess.run(
        [exe, "-o", "ip", str(log), str(FILTER.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout.split()


async def _login(port: int, keys: list[asyncssh.SSHKey], username: str = "alknet") -> bool:
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect("127.0.0.1", port, **client_options(client_keys=keys, username=username)), T
        )
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError, ConnectionError):
        return False
    conn.close()
    await asyncio.wait_for(conn.wait_closed(), T)
    return True


async def _banner(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
    return await asyncio.wait_for(reader.readline(), T), writer


async def test_fail2ban_counts_the_live_servers_rejects(tmp_path: Path) -> None:
    exe = _fail2ban_regex()
    good = new_keypair()
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(good.line + "\n")
    log_file = tmp_path / "alknet.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with log_file.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVER,
            str(keys_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert await _login(port, [good.ssh_key])  # one accepted login
            assert not await _login(port, [new_keypair().ssh_key for _ in range(3)])  # three rejected keys
            assert not await _login(port, [new_keypair().ssh_key], username=HOSTILE)  # hostile user name
            assert not await _login(port, [new_keypair().ssh_key for _ in range(5)])  # 4 rejects + disconnect
            first, w1 = await _banner(port)
            second, w2 = await _banner(port)
            third, w3 = await _banner(port)  # too_many_connections
            assert first.startswith(b"SSH-2.0-") and second.startswith(b"SSH-2.0-") and third == b""
            for writer in (w1, w2, w3):
                writer.close()
            await asyncio.sleep(0.2)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    text = log_file.read_text(encoding="ascii")
    lines = text.splitlines()
    assert all(line.startswith("time=") for line in lines), text
    rejects = [line for line in lines if line.endswith("result=reject")]
    assert len(rejects) == 3 + 1 + 4
    assert sum("reason=too_many_auth_attempts" in line for line in lines) == 1
    assert sum("reason=too_many_connections" in line for line in lines) == 1
    assert sum("result=accept" in line for line in lines) == 1
    assert 'user="x\\" remote_addr=192.0.2.1 y=\\""' in text

    expected = ["127.0.0.1"] * (len(rejects) + 1)
    ips = _matched_ips(exe, log_file)
    assert ips == expected
    assert "192.0.2.1" not in ips

    journal = tmp_path / "journal.log"
    journal.write_text("".join(re.sub(r"^time=\S+ ", "", line) + "\n" for line in lines), encoding="ascii")
    assert "time=" not in journal.read_text(encoding="ascii")
    assert _matched_ips(exe, journal) == expected
