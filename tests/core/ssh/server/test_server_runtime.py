"""``SshServer`` runtime API: options, bind errors, listen addresses, host key, reload (transport-and-ssh.md
§12, overview.md §7)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from alknet.core.auth.identity import Identity, KeyOptions
from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of
from alknet.core.config.reloader import ConfigReloader, build_dynamic
from alknet.core.config.static import ListenerSpec, StaticConfig
from alknet.core.errors import ConfigError
from alknet.core.ssh.channels import ChannelPeer
from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions
from alknet.core.transport.base import BindError


def _server(*specs: ListenerSpec, host_key: object = None) -> SshServer:
    options = SshServerOptions(
        host_key=host_key if host_key is not None else generate_private_key(),  # type: ignore[arg-type]
        listeners=tuple(ServerListener(s) for s in specs),
    )
    return SshServer(options, ConfigReloader.from_loaded(build_dynamic()))


async def test_listen_addrs_and_host_key_fingerprint(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "host_key"
    path.write_bytes(private_key_to_openssh(key))
    server = _server(
        ListenerSpec(kind="tcp", host="127.0.0.1", port=0),
        ListenerSpec(kind="tcp", host="::1", port=0),
        host_key=path,
    )
    assert server.host_key_fingerprint == public_key_of(key).fingerprint
    assert server.host_public_key == public_key_of(key).line
    async with server:
        addrs = server.listen_addrs
        assert len(addrs) == 2
        assert addrs[0].startswith("tcp://127.0.0.1:") and addrs[1].startswith("tcp://[::1]:")
        assert all(int(a.rpartition(":")[2]) > 0 for a in addrs)
        with pytest.raises(RuntimeError):
            await server.start()
    assert server.listen_addrs == []


async def test_port_in_use_is_a_one_line_bind_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        first = ListenerSpec(kind="tcp", host="127.0.0.1", port=0)
        server = _server(first, ListenerSpec(kind="tcp", host="127.0.0.1", port=port))
        with pytest.raises(BindError) as info:
            await server.start()
        assert str(info.value) == f"cannot listen on tcp 127.0.0.1:{port}: address already in use"
        assert server.listen_addrs == []  # the first listener was closed again


async def test_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        await _server().start()
    with pytest.raises(ConfigError, match="certificate"):
        await _server(ListenerSpec(kind="tls", host="127.0.0.1", port=0)).start()
    with pytest.raises(ConfigError, match="not an SSH listener"):
        await _server(ListenerSpec(kind="tcp", host="127.0.0.1", port=0, interface="raw")).start()
    with pytest.raises(ConfigError, match="quic"):
        await _server(ListenerSpec(kind="quic", host="127.0.0.1", port=0)).start()


def test_from_static_skips_raw_listeners(tmp_path: Path) -> None:
    static = StaticConfig(
        state_dir=tmp_path,
        listeners=(
            ListenerSpec(kind="tcp", host="127.0.0.1", port=2222),
            ListenerSpec(kind="tcp", host="127.0.0.1", port=7000, interface="raw"),
        ),
        proxy="socks5://127.0.0.1:9050",
        login_timeout=5.0,
        keepalive_interval=7.0,
    )
    options = SshServerOptions.from_static(static)
    assert [listener.spec.port for listener in options.listeners] == [2222]
    assert options.host_key == tmp_path / "host_key"
    assert (options.proxy, options.login_timeout, options.keepalive_interval) == (
        "socks5://127.0.0.1:9050",
        5.0,
        7.0,
    )


async def test_reload_without_sources_raises_config_error_and_keeps_config() -> None:
    server = _server(ListenerSpec(kind="tcp", host="127.0.0.1", port=0))
    before = server.dynamic.load()
    async with server:
        with pytest.raises(ConfigError):
            await server.reload()
        assert server.dynamic.load() is before


async def test_asyncssh_logger_is_capped() -> None:
    server = _server(ListenerSpec(kind="tcp", host="127.0.0.1", port=0))
    async with server:
        ssh_logger = logging.getLogger("asyncssh")
        assert ssh_logger.level == logging.WARNING
        assert not ssh_logger.isEnabledFor(logging.INFO)


def test_channel_peer_makes_its_bridge_set_with_the_first_bridge() -> None:
    """Idle connections carry no empty bridge set."""
    peer = ChannelPeer(Identity("SHA256:x", ("relay:connect",)), KeyOptions(), True, "tcp", None, "127.0.0.1")
    assert peer._bridges is None
    assert peer.bridges is peer.bridges and peer.bridges == set()
