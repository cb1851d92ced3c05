"""SSH authentication end to end (auth-and-config.md §4, §6.2; transport-and-ssh.md §7).

A real ``SshServer`` on loopback, real asyncssh clients (and stock OpenSSH where cheap); certificates are made
with ``ssh-keygen -s``. Every assertion on log lines uses the real logfmt handler.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import (
    EchoServer,
    Harness,
    LogCapture,
    T,
    connected,
    echo_through,
    new_keypair,
    open_failure,
    run_process,
    sign_certificate,
    ssh_command,
)

from alknet.core.auth.identity import Identity
from alknet.core.config.dynamic import RateLimits
from alknet.core.config.reloader import ConfigReloader
from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.errors import ConfigError
from alknet.core.ssh.channels import ControlChannel, ControlRegistry
from alknet.core.ssh.server import SshServer, SshServerOptions


def _reject_lines(logs: LogCapture) -> list[str]:
    return [line for line in logs.matching('msg="auth attempt"') if line.endswith("result=reject")]


async def _refused(harness: Harness, client_keys: object, **kw: object) -> BaseException:
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError, ConnectionError)) as info:
        conn = await harness.connect(client_keys, **kw)  # type: ignore[arg-type]
        conn.close()
    return info.value


# ------------------------------------------------------------------------------------------- plain keys


async def test_authorised_key_is_accepted_with_its_identity(tmp_path: Path) -> None:
    key = new_keypair()
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=key.line + "\n") as h, connected(h, key):
            (session,) = h.srv.sessions()
            assert session.identity == Identity(key.fingerprint, ("relay:connect",))
            assert session.transport == "tcp"
            assert session.remote_addr == "127.0.0.1"
        await logs.wait_for('msg="connection closed"')
    assert logs.lines[0] == 'level=INFO msg="connection opened" remote_addr=127.0.0.1 transport=tcp'
    assert logs.lines[1] == (
        f'level=INFO msg="auth attempt" remote_addr=127.0.0.1 user="alknet" '
        f"key_fingerprint={key.fingerprint} result=accept"
    )
    assert logs.lines[2].startswith('level=INFO msg="connection closed" remote_addr=127.0.0.1 duration=')
    assert len(logs.lines) == 3


async def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    known, unknown = new_keypair(), new_keypair()
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=known.line + "\n") as h:
            await _refused(h, unknown)
            assert h.srv.sessions() == []
    assert _reject_lines(logs) == [
        f'level=INFO msg="auth attempt" remote_addr=127.0.0.1 user="alknet" '
        f"key_fingerprint={unknown.fingerprint} result=reject"
    ]
    assert "result=accept" not in logs.text


async def test_rsa_key_is_rejected_with_its_fingerprint(tmp_path: Path) -> None:
    known = new_keypair()
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=known.line + "\n") as h:
            await _refused(h, [rsa])
    rejects = _reject_lines(logs)
    assert rejects, logs.text
    assert all(f"key_fingerprint={rsa.get_fingerprint('sha256')} result=reject" in line for line in rejects)


async def test_ca_key_as_plain_key_and_user_key_as_ca_are_rejected(tmp_path: Path) -> None:
    ca, user = new_keypair("ca"), new_keypair("user")
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=f"cert-authority {ca.line}\n{user.line}\n") as h:
            await _refused(h, ca)  # the CA key offered as a user key
            cert = sign_certificate(user, new_keypair("subject"), tmp_path, name="by-user")
            subject = asyncssh.import_private_key((tmp_path / "by-user").read_bytes())
            await _refused(h, [(subject, cert)])  # a certificate signed by a plain user key
    assert "result=accept" not in logs.text
    assert len(_reject_lines(logs)) >= 2


# ------------------------------------------------------------------------------------------ certificates


class CertCase:
    """A CA trusted through an ``authorized_keys`` cert-authority line and one subject key."""

    def __init__(self, tmp_path: Path, ca_options: str = 'alknet-scopes="relay:connect,role:ops"') -> None:
        self.tmp = tmp_path
        self.ca = new_keypair("ca")
        self.subject = new_keypair("subject")
        opts = ",".join(filter(None, ["cert-authority", ca_options]))
        self.authorized_keys = f"{opts} {self.ca.line}\n"

    def client_keys(self, name: str = "user", ca: object = None, **kw: object) -> list[object]:
        subject = new_keypair("subject")
        cert = sign_certificate(ca or self.ca, subject, self.tmp, name=name, **kw)  # type: ignore[arg-type]
        self.subject = subject
        return [(subject.ssh_key, cert)]


async def test_valid_certificate_is_accepted_with_subject_identity(tmp_path: Path) -> None:
    case = CertCase(tmp_path)
    keys = case.client_keys()
    with LogCapture() as logs:
        async with (
            Harness(tmp_path, authorized_keys=case.authorized_keys) as h,
            EchoServer() as echo,
            connected(h, keys) as conn,  # type: ignore[arg-type]
        ):
            (session,) = h.srv.sessions()
            assert session.identity == Identity(case.subject.fingerprint, ("relay:connect", "role:ops"))
            assert session.identity_id != case.ca.fingerprint
            assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"
    assert f"key_fingerprint={case.subject.fingerprint} result=accept" in logs.text


async def test_certificate_with_empty_principal_list_is_refused_canary(tmp_path: Path) -> None:
    """The canary of the auth wrapper: asyncssh alone accepts an empty principal list (any user)."""
    case = CertCase(tmp_path)
    keys = case.client_keys(principals=None)
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
            await _refused(h, keys)
    assert f"key_fingerprint={case.subject.fingerprint} result=reject" in logs.text
    assert "result=accept" not in logs.text


@pytest.mark.parametrize(
    ("label", "kw"),
    [
        ("principal bob", {"principals": ("bob",)}),
        ("expired", {"validity": "20200101:20200102"}),
        ("not yet valid", {"validity": "+52w:+53w"}),
        ("source-address", {"options": ("permit-port-forwarding", "source-address=10.0.0.0/8")}),
    ],
)
async def test_bad_certificates_are_refused(tmp_path: Path, label: str, kw: dict[str, object]) -> None:
    case = CertCase(tmp_path)
    keys = case.client_keys(**kw)
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
            await _refused(h, keys)
    assert f"key_fingerprint={case.subject.fingerprint} result=reject" in logs.text, label
    assert "result=accept" not in logs.text, label


async def test_certificate_with_unknown_critical_option_is_refused(tmp_path: Path) -> None:
    """``verify-required`` (asyncssh cannot even load such a certificate, so the stock client offers it)."""
    case = CertCase(tmp_path)
    ca_path = case.ca.write(tmp_path, "vr-ca")
    subject = new_keypair("subject")
    subject_path = subject.write(tmp_path, "vr")
    code, _, err = await run_process(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca_path),
            "-I",
            "vr",
            "-n",
            "alknet",
            "-O",
            "clear",
            "-O",
            "permit-port-forwarding",
            "-O",
            "verify-required",
            str(subject_path.with_suffix(".pub")),
        ]
    )
    assert code == 0, err
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
            code, _, _ = await run_process([*ssh_command(h.port(), subject_path), "127.0.0.1", "true"])
            await logs.wait_for('msg="connection closed"')
    assert code == 255
    assert f"key_fingerprint={subject.fingerprint} result=reject" in logs.text
    assert "result=accept" not in logs.text


async def test_certificate_from_untrusted_ca_is_refused(tmp_path: Path) -> None:
    case = CertCase(tmp_path)
    keys = case.client_keys(ca=new_keypair("other-ca"), name="other")
    async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
        await _refused(h, keys)


async def test_ca_line_principals_must_contain_the_user(tmp_path: Path) -> None:
    case = CertCase(tmp_path, ca_options='principals="deploy"')
    keys = case.client_keys(principals=("alknet", "deploy"))
    async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
        await _refused(h, keys)  # user alknet is not in principals="deploy"
        conn = await h.connect(keys, username="deploy")  # type: ignore[arg-type]
        conn.close()


async def test_ca_line_from_is_enforced(tmp_path: Path) -> None:
    case = CertCase(tmp_path, ca_options='from="10.0.0.0/8"')
    keys = case.client_keys()
    async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
        await _refused(h, keys)


async def test_certificate_without_port_forwarding_logs_in_but_opens_nothing(tmp_path: Path) -> None:
    case = CertCase(tmp_path)
    keys = case.client_keys(options=())

    async def handler(channel: ControlChannel) -> None:
        channel.writer.write(b"should not happen")

    control = ControlRegistry(handler)
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=case.authorized_keys, control=control) as h,
        connected(h, keys) as conn,  # type: ignore[arg-type]
    ):
        assert len(h.srv.sessions()) == 1
        failure = await open_failure(conn, "127.0.0.1", echo.port)
        assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        failure = await open_failure(conn, "alknet-control", 0)
        assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        with pytest.raises(asyncssh.ChannelListenError):
            await asyncio.wait_for(conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", echo.port), T)
        assert echo.accepted == 0


# ----------------------------------------------------------------------------------------- attempt limit


async def test_attempt_limit_disconnects_after_the_third_reject(tmp_path: Path) -> None:
    good = new_keypair()
    unknown = [new_keypair() for _ in range(5)]
    with LogCapture() as logs:
        async with Harness(
            tmp_path, authorized_keys=good.line + "\n", rate_limits=RateLimits(max_auth_attempts=3)
        ) as h:
            err = await _refused(h, [k.ssh_key for k in unknown])
            await logs.wait_for('msg="connection closed"')
    if isinstance(err, asyncssh.DisconnectError):
        assert err.code == asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE
    attempts = logs.matching('msg="auth attempt"')
    assert attempts == [
        f'level=INFO msg="auth attempt" remote_addr=127.0.0.1 user="alknet" '
        f"key_fingerprint={k.fingerprint} result=reject"
        for k in unknown[:3]
    ]
    i = logs.lines.index(attempts[-1])
    assert logs.lines[i + 1] == (
        'level=INFO msg="connection rejected" remote_addr=127.0.0.1 reason=too_many_auth_attempts'
    )


async def test_disconnect_code_14_reaches_the_client(tmp_path: Path) -> None:
    """A raw asyncssh client sees the disconnect reason code of the attempt limit."""
    unknown = [new_keypair() for _ in range(3)]
    async with Harness(tmp_path, rate_limits=RateLimits(max_auth_attempts=2)) as h:
        conn_err: BaseException | None = None
        try:
            conn = await h.connect([k.ssh_key for k in unknown])
            conn.close()
        except asyncssh.DisconnectError as exc:
            conn_err = exc
        assert isinstance(conn_err, asyncssh.DisconnectError)
        assert conn_err.code == asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE


async def test_two_unknown_keys_then_a_good_one_is_accepted(tmp_path: Path) -> None:
    good = new_keypair()
    unknown = [new_keypair(), new_keypair()]
    with LogCapture() as logs:
        async with (
            Harness(
                tmp_path, authorized_keys=good.line + "\n", rate_limits=RateLimits(max_auth_attempts=3)
            ) as h,
            connected(h, [*(k.ssh_key for k in unknown), good.ssh_key]),  # type: ignore[arg-type]
        ):
            assert len(h.srv.sessions()) == 1
    assert len(_reject_lines(logs)) == 2
    assert f"key_fingerprint={good.fingerprint} result=accept" in logs.text
    assert "too_many_auth_attempts" not in logs.text


async def test_zero_means_unlimited_attempts(tmp_path: Path) -> None:
    good = new_keypair()
    unknown = [new_keypair() for _ in range(12)]
    async with (
        Harness(tmp_path, authorized_keys=good.line + "\n", rate_limits=RateLimits(max_auth_attempts=0)) as h,
        connected(h, [*(k.ssh_key for k in unknown), good.ssh_key]),  # type: ignore[arg-type]
    ):
        assert len(h.srv.sessions()) == 1


# ------------------------------------------------------------------------------------------------ reload


async def test_removed_key_keeps_existing_connection(tmp_path: Path) -> None:
    a, b = new_keypair(), new_keypair()
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=f"{a.line}\n{b.line}\n") as h,
        connected(h, a) as conn,
    ):
        assert h.reloader is not None
        await h.reloader.reload_auth(authorized_keys=(b.line + "\n").encode())
        assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"
        (session,) = h.srv.sessions()
        assert session.identity == Identity(a.fingerprint, ("relay:connect",))
        await _refused(h, a)  # a new connection with the removed key fails
        conn_b = await h.connect(b)
        conn_b.close()


async def test_evict_revoked_disconnects_with_code_11(tmp_path: Path) -> None:
    a, b = new_keypair(), new_keypair()
    case = CertCase(tmp_path)
    cert_keys = case.client_keys()
    keys = f"{a.line}\n{b.line}\n{case.authorized_keys}"
    async with Harness(tmp_path, authorized_keys=keys, evict_revoked=True) as h:
        conn_a = await h.connect(a)
        conn_b = await h.connect(b)
        conn_c = await h.connect(cert_keys)  # type: ignore[arg-type]
        assert h.reloader is not None
        await h.reloader.reload_auth(authorized_keys=(b.line + "\n").encode())  # a and the CA removed
        await asyncio.wait_for(conn_a.wait_closed(), T)
        await asyncio.wait_for(conn_c.wait_closed(), T)
        assert not conn_b.is_closed()
        assert [s.identity_id for s in h.srv.sessions()] == [b.fingerprint]
        conn_b.close()


async def test_new_key_after_reload_logs_in(tmp_path: Path) -> None:
    a, b = new_keypair(), new_keypair()
    async with Harness(tmp_path, authorized_keys=a.line + "\n") as h:
        await _refused(h, b)
        assert h.reloader is not None
        await h.reloader.reload_auth(authorized_keys=f"{a.line}\n{b.line}\n".encode())
        conn = await h.connect(b)
        conn.close()


# ------------------------------------------------------------------------------------- timeouts, garbage


async def test_login_timeout_disconnects_a_silent_client(tmp_path: Path) -> None:
    async with Harness(tmp_path, login_timeout=0.5) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port())
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        loop = asyncio.get_running_loop()
        start = loop.time()
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
        elapsed = loop.time() - start
        writer.close()
        assert 0.3 <= elapsed <= 2.5, elapsed


async def test_garbage_instead_of_banner_drops_only_that_connection(tmp_path: Path) -> None:
    key = new_keypair()
    async with EchoServer() as echo, Harness(tmp_path, authorized_keys=key.line + "\n") as h:
        async with connected(h, key) as conn:
            sock = socket.create_connection(("127.0.0.1", h.port()), timeout=5)
            sock.sendall(b"\x16\x03\x01 this is not ssh at all\r\n" * 20 + b"\x00" * 4096)
            sock.settimeout(5)
            data = b""
            try:
                while chunk := await asyncio.to_thread(sock.recv, 65536):
                    data += chunk
            except OSError:
                pass
            sock.close()
            assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"
        conn2 = await h.connect(key)
        conn2.close()


async def test_hostile_user_name_cannot_inject_a_field(tmp_path: Path) -> None:
    hostile = 'x" remote_addr=192.0.2.1 y="'
    with LogCapture() as logs:
        async with Harness(tmp_path) as h:
            await _refused(h, new_keypair(), username=hostile)
    (line,) = _reject_lines(logs)
    assert 'user="x\\" remote_addr=192.0.2.1 y=\\""' in line
    assert line.startswith('level=INFO msg="auth attempt" remote_addr=127.0.0.1 user=')


# ------------------------------------------------------------------------------------------- stock ssh


async def test_stock_ssh_password_auth_gets_permission_denied_publickey(tmp_path: Path) -> None:
    key = new_keypair()
    async with Harness(tmp_path, authorized_keys=key.line + "\n") as h:
        cmd = ssh_command(h.port())
        cmd[1:1] = ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
        code, _, err = await run_process([*cmd, "127.0.0.1", "true"])
    assert code == 255
    assert "Permission denied (publickey)" in err


async def test_stock_ssh_rsa_then_ed25519_is_accepted_with_one_reject(tmp_path: Path) -> None:
    good = new_keypair()
    good_path = good.write(tmp_path, "id_ed25519")
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    rsa_path = tmp_path / "id_rsa"
    rsa.write_private_key(str(rsa_path))
    rsa_path.chmod(0o600)
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=good.line + "\n") as h:
            code, _, _ = await run_process([*ssh_command(h.port(), rsa_path, good_path), "127.0.0.1", "true"])
            await logs.wait_for('msg="connection closed"')
    assert code != 0  # "true" needs a session channel, which is refused
    rejects = _reject_lines(logs)
    assert rejects == [
        f'level=INFO msg="auth attempt" remote_addr=127.0.0.1 user="alknet" '
        f"key_fingerprint={rsa.get_fingerprint('sha256')} result=reject"
    ]
    assert f"key_fingerprint={good.fingerprint} result=accept" in logs.text


async def test_stock_ssh_certificate_login(tmp_path: Path) -> None:
    case = CertCase(tmp_path)
    case.client_keys(name="stock")
    with LogCapture() as logs:
        async with Harness(tmp_path, authorized_keys=case.authorized_keys) as h:
            code, _, _ = await run_process([*ssh_command(h.port(), tmp_path / "stock"), "127.0.0.1", "true"])
            await logs.wait_for("result=accept")
    assert code != 0
    assert f"key_fingerprint={case.subject.fingerprint} result=accept" in logs.text


async def test_reload_from_sources_adds_a_key_and_a_bad_file_keeps_the_old_keys(tmp_path: Path) -> None:
    """What SIGHUP does: ``SshServer.reload()`` re-reads the TOML file and every file it names."""
    a, b = new_keypair(), new_keypair()
    keys = tmp_path / "authorized_keys"
    keys.write_text(a.line + "\n")
    config = tmp_path / "alknet.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[auth]\nauthorized_keys = "authorized_keys"\n'
        '[[listeners]]\ntransport = "tcp"\nlisten = "127.0.0.1:0"\n'
    )
    sources = ConfigSources(Overrides(config=config), env={}, check_server_files=False)
    loaded = sources.load()
    assert loaded.static is not None
    server = SshServer(
        SshServerOptions.from_static(loaded.static, host_key=new_keypair().key),
        ConfigReloader.from_loaded(loaded, sources),
    )
    with LogCapture() as logs:
        async with server:
            harness = Harness(tmp_path, server=server)  # only its client helpers: the server runs already
            await _refused(harness, b)
            keys.write_text(f"{a.line}\n{b.line}\n")
            await server.reload()
            assert 'level=INFO msg="config reload" result=ok' in logs.lines
            conn = await harness.connect(b)
            conn.close()
            keys.write_text(f"{a.line}\nno-pty {b.line}\n")
            with pytest.raises(ConfigError):
                await server.reload()
            assert any('msg="config reload" result=error' in line for line in logs.lines)
            conn = await harness.connect(b)  # the old keys still work
            conn.close()
