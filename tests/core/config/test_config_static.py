"""Listener address parsing, listener validation and uniqueness, StaticConfig immutability and diffs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.config.static import (
    ListenerSpec,
    StaticConfig,
    default_listener,
    parse_listen,
    parse_relays,
    static_diff,
    unique_errors,
)
from alknet.core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "kind", "host", "port", "interface"),
    [
        ("127.0.0.1:2222", "tcp", "127.0.0.1", 2222, "ssh"),
        ("127.0.0.1", "tcp", "127.0.0.1", 2222, "ssh"),
        ("tcp://0.0.0.0:0", "tcp", "0.0.0.0", 0, "ssh"),
        ("tls://0.0.0.0", "tls", "0.0.0.0", 2443, "ssh"),
        ("tls://example.com:443", "tls", "example.com", 443, "ssh"),
        ("quic://[::1]", "quic", "::1", 2443, "ssh"),
        ("quic://[0:0::1]:4433", "quic", "::1", 4433, "ssh"),
        ("[::1]:80", "tcp", "::1", 80, "ssh"),
        ("[::]", "tcp", "::", 2222, "ssh"),
        ("iroh://", "iroh", "0.0.0.0", 0, "ssh"),
        ("iroh://127.0.0.1:0", "iroh", "127.0.0.1", 0, "ssh"),
        ("raw+tcp://127.0.0.1:7000", "tcp", "127.0.0.1", 7000, "raw"),
        ("localhost:2222", "tcp", "localhost", 2222, "ssh"),
        ("TLS://127.0.0.1:1", "tls", "127.0.0.1", 1, "ssh"),
    ],
)
def test_parse_listen(text: str, kind: str, host: str, port: int, interface: str) -> None:
    spec = parse_listen(text)
    assert (spec.kind, spec.host, spec.port, spec.interface) == (kind, host, port, interface)


def test_parse_listen_scheme_less_takes_default_kind() -> None:
    spec = parse_listen("127.0.0.1:0", default_kind="quic")
    assert (spec.kind, spec.protocol) == ("quic", "udp")
    assert parse_listen("127.0.0.1", default_kind="tls").port == 2443
    assert parse_listen("tcp://127.0.0.1", default_kind="quic").kind == "tcp"  # explicit scheme wins


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("raw+tcp://127.0.0.1", "explicit port"),
        ("::1:80", "brackets"),
        ("foo://127.0.0.1:1", "unknown listener kind"),
        ("127.0.0.1:65536", "port"),
        ("127.0.0.1:01", "port"),
        ("127.0.0.1:-1", "port"),
        ("127.0.0.1:", "port"),
        ("tcp://", "host"),
        (":2222", "host"),
        ("[::1", "unterminated"),
        ("[nothost]:1", "IPv6"),
        ("[::1]x", "PORT"),
        ("bad host:1", "whitespace"),
        ("", "empty"),
        ("bad_@host:1", "invalid host"),
    ],
)
def test_parse_listen_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_listen(text)


def test_default_listener() -> None:
    assert default_listener().url == "tcp://127.0.0.1:2222"
    assert default_listener("tls").url == "tls://127.0.0.1:2443"
    assert default_listener("quic").url == "quic://127.0.0.1:2443"
    assert default_listener("iroh").url == "iroh://0.0.0.0:0"
    assert ListenerSpec(kind="quic", host="::1", port=5).url == "quic://[::1]:5"


def test_uniqueness_rules() -> None:
    tcp = parse_listen("tcp://127.0.0.1:2443")
    assert unique_errors([tcp, parse_listen("quic://127.0.0.1:2443")], "x") == []  # different protocol
    assert unique_errors([tcp, parse_listen("tls://127.0.0.1:2443")], "x")  # both TCP
    assert unique_errors([tcp, parse_listen("raw+tcp://127.0.0.1:2443")], "x")
    assert unique_errors([parse_listen("quic://[::1]:1"), parse_listen("iroh://[0::1]:1")], "x")
    zero = parse_listen("tcp://127.0.0.1:0")
    assert unique_errors([zero, zero], "x") == []  # two free ports never clash
    assert unique_errors([tcp, parse_listen("tcp://127.0.0.2:2443")], "x") == []


def _sources(tmp_path: Path, **kw: object) -> ConfigSources:
    ov = Overrides(state_dir=tmp_path / "state", **kw)  # type: ignore[arg-type]
    return ConfigSources(ov, {}, cwd=tmp_path)


def test_duplicate_listen_flags_refused(tmp_path: Path) -> None:
    src = _sources(tmp_path, listen=("tcp://127.0.0.1:2222", "tcp://127.0.0.1:2222"))
    with pytest.raises(ConfigError, match="same address and protocol"):
        src.load_static()
    ok = _sources(tmp_path, listen=("tcp://127.0.0.1:2443", "quic://127.0.0.1:2443")).load_static()
    assert [s.url for s in ok.listeners] == ["tcp://127.0.0.1:2443", "quic://127.0.0.1:2443"]


def test_default_listener_follows_transport_flag(tmp_path: Path) -> None:
    assert [s.url for s in _sources(tmp_path).load_static().listeners] == ["tcp://127.0.0.1:2222"]
    assert [s.url for s in _sources(tmp_path, transport="tls").load_static().listeners] == [
        "tls://127.0.0.1:2443"
    ]
    assert [s.url for s in _sources(tmp_path, transport="iroh").load_static().listeners] == [
        "iroh://0.0.0.0:0"
    ]
    spec = _sources(tmp_path, listen=("127.0.0.1:0",), transport="quic").load_static().listeners[0]
    assert spec.kind == "quic"


def test_env_listen_is_comma_separated_and_ignores_env_transport(tmp_path: Path) -> None:
    env = {"ALKNET_LISTEN": "tcp://127.0.0.1:0,quic://127.0.0.1:0", "ALKNET_TRANSPORT": "tls"}
    static = ConfigSources(Overrides(state_dir=tmp_path), env, cwd=tmp_path).load_static()
    assert [s.kind for s in static.listeners] == ["tcp", "quic"]
    assert static.client.transport == "tls"  # ALKNET_TRANSPORT is a client setting only
    default = ConfigSources(Overrides(state_dir=tmp_path), {"ALKNET_TRANSPORT": "tls"}, cwd=tmp_path)
    assert default.load_static().listeners[0].kind == "tcp"
    with pytest.raises(ConfigError, match="ALKNET_LISTEN"):
        ConfigSources(
            Overrides(state_dir=tmp_path), {"ALKNET_LISTEN": "bogus://x:1"}, cwd=tmp_path
        ).load_static()


def test_raw_listener_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="insecure_plaintext"):
        _sources(tmp_path, listen=("raw+tcp://0.0.0.0:7000",)).load_static()
    static = _sources(tmp_path, listen=("raw+tcp://0.0.0.0:7000",), insecure_plaintext=True).load_static()
    assert static.listeners[0].insecure_plaintext
    assert (
        _sources(tmp_path, listen=("raw+tcp://127.0.0.1:7000",)).load_static().listeners[0].interface == "raw"
    )


def test_listener_flag_conflicts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--stealth needs a tls listener"):
        _sources(tmp_path, stealth=True).load_static()
    static = _sources(
        tmp_path, stealth=True, stealth_timeout=3.0, listen=("tls://127.0.0.1:0", "127.0.0.1:0")
    )
    tls, tcp = static.load_static().listeners
    assert (tls.stealth, tls.stealth_timeout, tcp.stealth) == (True, 3.0, False)
    with pytest.raises(ConfigError, match="--tls-cert needs --tls-key"):
        _sources(tmp_path, tls_cert=tmp_path / "a.pem")
    with pytest.raises(ConfigError, match="--acme-domain needs --acme-agree-tos"):
        _sources(tmp_path, acme_domains=("example.com",))


def test_tls_flags_apply_to_tls_listeners_and_files_must_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    src = _sources(tmp_path, listen=("tls://127.0.0.1:0", "tcp://127.0.0.1:0"), tls_cert=cert, tls_key=key)
    with pytest.raises(ConfigError) as info:
        src.load_static()
    assert any(str(cert) in e for e in info.value.errors) and any(str(key) in e for e in info.value.errors)
    cert.write_text("x")
    key.write_text("y")
    tls, tcp = src.load_static().listeners
    assert (tls.tls_cert, tls.tls_key, tcp.tls_cert) == (cert, key, None)


def test_explicit_key_must_exist_default_need_not(tmp_path: Path) -> None:
    assert _sources(tmp_path).load_static().host_key_path == tmp_path / "state" / "host_key"
    with pytest.raises(ConfigError, match="nonexistent"):
        _sources(tmp_path, key=tmp_path / "nonexistent").load_static()
    lenient = ConfigSources(
        Overrides(key=tmp_path / "nonexistent"), {}, check_server_files=False, cwd=tmp_path
    )
    assert lenient.load_static().host_key == tmp_path / "nonexistent"


def test_relays() -> None:
    assert parse_relays(["default"]) == ()
    assert parse_relays(["disabled"]) == ("disabled",)
    assert parse_relays(["https://r.example/"]) == ("https://r.example/",)
    with pytest.raises(ValueError):
        parse_relays(["disabled", "https://r.example/"])
    with pytest.raises(ValueError):
        parse_relays(["ftp://r"])


def test_static_config_is_frozen_and_diffable(tmp_path: Path) -> None:
    a = StaticConfig(state_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.auth_provider = "storage"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.listeners[0].port = 1  # type: ignore[misc]
    b = dataclasses.replace(a, auth_provider="chain", listeners=(default_listener("tls"),), max_frame=4096)
    assert static_diff(a, b) == ["listeners", "server.max_frame", "auth.provider"]
    c = dataclasses.replace(a, storage=dataclasses.replace(a.storage, readers=8))
    assert static_diff(a, c) == ["storage.readers"]
    assert static_diff(a, a) == []
