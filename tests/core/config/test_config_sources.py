"""TOML strictness, environment parsing and the CLI > env > TOML > default precedence."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from alknet.core.config.sources import ConfigSources, Overrides, parse_env
from alknet.core.errors import ConfigError

Write = Callable[[str, str], Path]


def _errors(path: Path, env: dict[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ConfigSources(Overrides(config=path, **kw), env or {}, cwd=path.parent).load()  # type: ignore[arg-type]
    return info.value.errors


def _load(path: Path | None, env: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    ov = Overrides(config=path, **kw)  # type: ignore[arg-type]
    return ConfigSources(ov, env or {}, cwd=path.parent if path else Path.cwd()).load()


# ------------------------------------------------------------------------------------------- precedence


def test_max_auth_attempts_precedence_and_reload(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", f'state_dir = "{tmp_path / "s"}"\n[rate_limits]\nmax_auth_attempts = 7\n')
    env = {"ALKNET_MAX_AUTH_ATTEMPTS": "5"}
    assert _load(cfg, env, max_auth_attempts=3).dynamic.rate_limits.max_auth_attempts == 3
    sources = ConfigSources(Overrides(config=cfg), env, cwd=tmp_path)
    assert sources.load().dynamic.rate_limits.max_auth_attempts == 5
    cfg.write_text(cfg.read_text().replace("= 7", "= 4"))
    assert sources.load().dynamic.rate_limits.max_auth_attempts == 5  # captured env keeps precedence
    assert _load(cfg).dynamic.rate_limits.max_auth_attempts == 4
    assert (
        _load(cfg, {"ALKNET_MAX_AUTH_ATTEMPTS": ""}).dynamic.rate_limits.max_auth_attempts == 4
    )  # empty = unset
    assert _load(None, {}, state_dir=tmp_path).dynamic.rate_limits.max_auth_attempts == 10


def test_env_captured_at_construction(write: Write, tmp_path: Path) -> None:
    env = {"ALKNET_MAX_CONNECTIONS_PER_IP": "2"}
    sources = ConfigSources(Overrides(state_dir=tmp_path), env, cwd=tmp_path)
    env["ALKNET_MAX_CONNECTIONS_PER_IP"] = "9"
    assert sources.load().dynamic.rate_limits.max_connections_per_ip == 2


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ALKNET_MAX_AUTH_ATTEMPTS", "ten"),
        ("ALKNET_MAX_AUTH_ATTEMPTS", "-1"),
        ("ALKNET_MAX_CONNECTIONS_PER_IP", "1.5"),
        ("ALKNET_FORWARDING_DEFAULT", "maybe"),
        ("ALKNET_TRANSPORT", "udp"),
        ("ALKNET_LOG_LEVEL", "loud"),
        ("ALKNET_DEBUG", "perhaps"),
        ("ALKNET_NODE", "Head"),
        ("ALKNET_IROH_RELAY", "ftp://x"),
    ],
)
def test_malformed_env_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConfigSources(Overrides(), {var: value})
    assert info.value.errors[0].startswith(f"{var}:")


def test_env_values_parsed(tmp_path: Path) -> None:
    env = parse_env(
        {
            "ALKNET_HOME": "rel/home",
            "ALKNET_IROH_RELAY": "disabled",
            "ALKNET_DEBUG": "1",
            "ALKNET_SERVER": "",
            "ALKNET_FORWARDING_DEFAULT": "deny",
        },
        cwd=tmp_path,
    )
    assert env.home == tmp_path / "rel" / "home"
    assert (env.iroh_relay, env.debug, env.server, env.forwarding_default) == (
        ("disabled",),
        True,
        None,
        "deny",
    )


def test_proxy_variables_are_ignored(tmp_path: Path) -> None:
    env = {"HTTP_PROXY": "http://p:1", "ALL_PROXY": "socks5://p:1", "ALKNET_PROXY": "socks5://127.0.0.1:1"}
    static = ConfigSources(Overrides(state_dir=tmp_path), env, cwd=tmp_path).load_static()
    assert static.proxy is None and static.client.proxy is None


def test_client_settings_precedence(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", '[client]\nserver = "file:1"\nuser = "u-file"\nforwards = ["1:a:1", "2:b:2"]\n')
    env = {"ALKNET_SERVER": "env:1", "ALKNET_USER": "u-env"}
    static = ConfigSources(Overrides(config=cfg, server="flag:1"), env, cwd=tmp_path).load_static()
    assert (static.client.server, static.client.user) == ("flag:1", "u-env")
    static = ConfigSources(Overrides(config=cfg), {"ALKNET_SERVER": ""}, cwd=tmp_path).load_static()
    assert (static.client.server, static.client.user, static.client.forwards) == (
        "file:1",
        "u-file",
        ("1:a:1", "2:b:2"),
    )
    static = ConfigSources(Overrides(config=cfg, forwards=("3:c:3",)), {}, cwd=tmp_path).load_static()
    assert static.client.forwards == ("3:c:3",)  # any -L replaces client.forwards


def test_forwarding_default_flag_and_env(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", f'state_dir = "{tmp_path}"\n[forwarding]\ndefault = "allow"\n')
    assert str(_load(cfg).dynamic.forwarding.default) == "allow"
    assert str(_load(cfg, {"ALKNET_FORWARDING_DEFAULT": "deny"}).dynamic.forwarding.default) == "deny"
    both = _load(cfg, {"ALKNET_FORWARDING_DEFAULT": "deny"}, forwarding_default="allow")
    assert str(both.dynamic.forwarding.default) == "allow"
    assert (
        str(_load(None, {}, state_dir=tmp_path, forwarding_default="deny").dynamic.forwarding.default)
        == "deny"
    )


def test_lists_replace_never_merge(write: Write, tmp_path: Path) -> None:
    cfg = write(
        "c.toml",
        f'state_dir = "{tmp_path}"\n[[listeners]]\ntransport = "tcp"\nlisten = "127.0.0.1:2300"\n'
        '[[listeners]]\ntransport = "quic"\nlisten = "127.0.0.1:2301"\n',
    )
    assert [s.url for s in _load(cfg).static.listeners] == ["tcp://127.0.0.1:2300", "quic://127.0.0.1:2301"]
    flag = _load(cfg, listen=("tcp://127.0.0.1:0",)).static
    assert [s.url for s in flag.listeners] == ["tcp://127.0.0.1:0"]
    env = _load(cfg, {"ALKNET_LISTEN": "tls://127.0.0.1:0"}).static
    assert [s.url for s in env.listeners] == ["tls://127.0.0.1:0"]


def test_overrides_from_argparse_namespace(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-auth-attempts", type=int)
    parser.add_argument("--listen", action="append")
    parser.add_argument("--no-token-auth", action="store_true")
    parser.add_argument("--no-storage", action="store_true")
    parser.add_argument("--authorized-keys")
    parser.add_argument("--keepalive")
    parser.add_argument("--acme-domain", action="append")
    ns = parser.parse_args(
        ["--max-auth-attempts", "3", "--listen", "a:1", "--listen", "b:2", "--no-token-auth"]
    )
    ns.authorized_keys = "ak"
    ns.keepalive = "2.5"
    ov = Overrides.from_namespace(ns, cwd=tmp_path)
    assert ov.max_auth_attempts == 3 and ov.listen == ("a:1", "b:2") and ov.token_auth is False
    assert ov.storage is None and ov.acme_domains is None  # not given
    assert ov.authorized_keys == tmp_path / "ak" and ov.keepalive == 2.5
    ns.keepalive = "soon"
    with pytest.raises(ConfigError, match="--keepalive"):
        Overrides.from_namespace(ns)


def test_flag_values_checked(tmp_path: Path) -> None:
    for kw, flag in (
        ({"max_auth_attempts": -1}, "--max-auth-attempts"),
        ({"forwarding_default": "maybe"}, "--forwarding-default"),
        ({"identity_provider": "ldap"}, "--identity-provider"),
        ({"proxy": "ftp://x:1"}, "--proxy"),
        ({"login_timeout": 0.0}, "--login-timeout"),
    ):
        with pytest.raises(ConfigError, match=flag):
            ConfigSources(Overrides(**kw), {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--no-storage"):
        ConfigSources(Overrides(record_calls=True, storage=False), {})
    with pytest.raises(ConfigError, match="--no-storage"):
        ConfigSources(Overrides(identity_provider="chain", storage=False), {})


def test_token_settings(write: Write, tmp_path: Path) -> None:
    cfg = write(
        "c.toml", f'state_dir = "{tmp_path}"\n[auth]\nevict_revoked = true\n[auth.token]\nmax_age = 60\n'
    )
    auth = _load(cfg).dynamic.auth
    assert (auth.token_enabled, auth.token_max_age, auth.evict_revoked) == (True, 60, True)
    assert _load(cfg, token_auth=False).dynamic.auth.token_enabled is False


# ------------------------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[listners]]\n", "unknown key 'listners'"),
        ("[server]\nnonsense = 1\n", "unknown key 'server.nonsense'"),
        ('[server]\nstate_dir = "/x"\n', "unknown key 'server.state_dir'"),
        ('[storage]\ndir = "/x"\n', "unknown key 'storage.dir'"),
        ('[forwarding]\ndefualt = "deny"\n', "forwarding.defualt"),
        ('[forwarding]\ndefault = "maybe"\n', "forwarding.default"),
        ('[[forwarding.rules]]\ntarget = "10.0.0.0/33"\naction = "allow"\n', "forwarding.rules[1].target"),
        (
            '[[forwarding.rules]]\ntarget = "*"\naction = "allow"\n'
            '[[forwarding.rules]]\ntarget = "*"\naction = "allow"\ntransports = []\n',
            "forwarding.rules[2].transports",
        ),
        (
            '[[forwarding.rules]]\ntarget = "*"\naction = "allow"\ntransports = ["udp"]\n',
            "forwarding.rules[1].transports",
        ),
        (
            '[[forwarding.rules]]\ntarget = "*"\naction = "allow"\nprincipals = []\n',
            "forwarding.rules[1].principals",
        ),
        ('[server]\nlogin_timeout = "soon"\n', "server.login_timeout: must be a number"),
        ("[server]\nlogin_timeout = 0\n", "server.login_timeout: out of range"),
        ("[server]\nmax_frame = 512\n", "server.max_frame: out of range"),
        ("[server]\nmax_frame = 67108865\n", "server.max_frame: out of range"),
        ("[server]\nkeepalive_count = true\n", "server.keepalive_count: must be an integer"),
        ('[server]\nproxy = "ftp://p:1"\n', "server.proxy"),
        ("[rate_limits]\nmax_auth_attempts = -1\n", "rate_limits.max_auth_attempts: out of range"),
        (
            "[rate_limits]\nmax_connections_per_ip = 1.5\n",
            "rate_limits.max_connections_per_ip: must be an integer",
        ),
        ("[rate_limits]\nburst = 1\n", "unknown key 'rate_limits.burst'"),
        ("[auth.token]\nmax_age = 0\n", "auth.token.max_age: out of range"),
        ("[auth.token]\nmax_age = 3601\n", "auth.token.max_age: out of range"),
        ('[auth.token]\nenabled = "yes"\n', "auth.token.enabled: must be true or false"),
        ('[auth]\nprovider = "ldap"\n', "auth.provider: must be one of"),
        ("[auth]\nkeys = []\n", "unknown key 'auth.keys'"),
        ('[auth]\nprovider = "storage"\n[storage]\nenabled = false\n', "auth.provider"),
        ("server = 1\n", "server: must be a table"),
        ("state_dir = 3\n", "state_dir: must be a string"),
        ('[[listeners]]\ntransport = "udp"\n', "listeners[1].transport"),
        ('[[listeners]]\nlisten = "::1:22"\n', "listeners[1].listen"),
        ('[[listeners]]\ntransport = "tcp"\nlisten = "quic://127.0.0.1:1"\n', "listeners[1].listen"),
        ('[[listeners]]\ninterface = "raw"\nlisten = "127.0.0.1"\n', "explicit port"),
        ('[[listeners]]\ninterface = "raw"\nlisten = "0.0.0.0:7000"\n', "insecure_plaintext"),
        (
            '[[listeners]]\ntransport = "quic"\ninterface = "raw"\nlisten = "127.0.0.1:1"\n',
            "listeners[1].listen",
        ),
        ("[[listeners]]\nstealth = true\n", "stealth is only for tls"),
        ('[[listeners]]\ntransport = "tcp"\n[listeners.tls]\ncert = "c"\nkey = "k"\n', "listeners[1].tls"),
        ('[[listeners]]\ntransport = "tls"\n[listeners.tls]\ncert = "c"\n', "cert and key"),
        (
            '[[listeners]]\ntransport = "tls"\n[listeners.tls]\nacme_domains = ["a.example"]\n',
            "acme_agree_tos",
        ),
        (
            '[[listeners]]\ntransport = "tls"\n[listeners.tls]\ncolour = 1\n',
            "unknown key 'listeners[1].tls.colour'",
        ),
        (
            '[[listeners]]\ntransport = "iroh"\n[listeners.iroh]\nrelay = ["default", "disabled"]\n',
            "listeners[1].iroh.relay",
        ),
        ('[[listeners]]\nlisten = "127.0.0.1:5"\n[[listeners]]\nlisten = "127.0.0.1:5"\n', "same address"),
        ('[worker]\nnode = "head"\n', "worker.node"),
        ('[worker]\nservices = ["gpu"]\n', "worker.services"),
        ('[client]\ntransport = "udp"\n', "client.transport"),
        ('[client]\nforwards = "1:a:1"\n', "client.forwards: must be a list"),
        ("[secret]\nkey_version = 0\n", "secret.key_version"),
        ("[secret]\nkey_version = 1\n", "secret.key_version: out of range"),
        ("[secret]\nkey_version = 2147483650\n", "secret.key_version: out of range"),
        ("[flowgraph]\nrecord_calls = true\n[storage]\nenabled = false\n", "flowgraph.record_calls"),
    ],
)
def test_strict_schema_names_the_dotted_key(write: Write, tmp_path: Path, text: str, needle: str) -> None:
    prefix = "" if text.startswith("state_dir") else f'state_dir = "{tmp_path / "s"}"\n'
    cfg = write("config.toml", prefix + text)
    errors = _errors(cfg)
    assert any(needle in e for e in errors), errors
    assert all(e.startswith(str(cfg)) for e in errors), errors


def test_unknown_top_level_key_message(write: Write, tmp_path: Path) -> None:
    cfg = write("config.toml", "listners = 1\n")
    assert _errors(cfg)[0] == f"{cfg}: unknown key 'listners'"


def test_invalid_toml_and_missing_file(write: Write, tmp_path: Path) -> None:
    assert "invalid TOML" in _errors(write("bad.toml", "[server\n"))[0]
    assert "no such file" in _errors(tmp_path / "missing.toml")[0]


def test_all_errors_are_reported(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", "[server]\nnonsense = 1\n[storage]\ndir = 2\n")
    errors = _errors(cfg)
    assert len(errors) == 2


def test_forwarding_default_override_does_not_hide_bad_toml(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", '[forwarding]\ndefault = "maybe"\n')
    assert any("forwarding.default" in e for e in _errors(cfg, forwarding_default="deny"))


# ---------------------------------------------------------------------------------------- paths, files


def test_relative_paths_and_home(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_line
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write("conf/keys/ak", key_line() + "\n")
    cfg = write(
        "conf/c.toml",
        'state_dir = "~/state"\n[auth]\nauthorized_keys = "keys/ak"\n[client]\nidentity = "~/id"\n',
    )
    loaded = ConfigSources(Overrides(config=cfg), {}, cwd=tmp_path / "elsewhere").load()
    assert loaded.static is not None
    assert loaded.static.state_dir == tmp_path / "home" / "state"
    assert loaded.static.client.identity == tmp_path / "home" / "id"
    assert loaded.auth_parts.authorized_keys_source == str(tmp_path / "conf" / "keys" / "ak")
    assert len(loaded.dynamic.auth.keys) == 1


def test_state_dir_precedence(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", 'state_dir = "from-file"\n')
    assert _load(cfg).static.state_dir == tmp_path / "from-file"
    assert _load(cfg, {"ALKNET_HOME": str(tmp_path / "env")}).static.state_dir == tmp_path / "env"
    flag = _load(cfg, {"ALKNET_HOME": str(tmp_path / "env")}, state_dir=tmp_path / "flag")
    assert flag.static.state_dir == tmp_path / "flag"


def test_config_path_from_env(write: Write, tmp_path: Path) -> None:
    cfg = write("c.toml", f'state_dir = "{tmp_path}"\n[rate_limits]\nmax_auth_attempts = 6\n')
    loaded = ConfigSources(Overrides(), {"ALKNET_CONFIG": str(cfg)}, cwd=tmp_path).load()
    assert loaded.dynamic.rate_limits.max_auth_attempts == 6


def test_authorized_keys_default_missing_is_empty_explicit_missing_is_error(tmp_path: Path) -> None:
    loaded = _load(None, {}, state_dir=tmp_path)
    assert loaded.dynamic.auth.empty
    (tmp_path / "authorized_keys").write_text("ssh-rsa AAAA bad\n")  # the default file is read when present
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'authorized_keys'}:1:"):
        _load(None, {}, state_dir=tmp_path)
    with pytest.raises(ConfigError, match="nope"):
        _load(None, {}, state_dir=tmp_path, authorized_keys=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"ca\.pub"):
        _load(None, {"ALKNET_CERT_AUTHORITY": str(tmp_path / "ca.pub")}, state_dir=tmp_path)


def test_authorized_keys_errors_name_file_and_line(write: Write, tmp_path: Path, key_line) -> None:  # type: ignore[no-untyped-def]
    ak = write("ak", key_line() + "\n" + key_line(options="no-pty") + "\n")
    with pytest.raises(ConfigError) as info:
        _load(None, {"ALKNET_AUTHORIZED_KEYS": str(ak)}, state_dir=tmp_path)
    assert info.value.errors[0].startswith(f"{ak}:2:")
    assert "no-pty" in info.value.errors[0]


def test_cert_authority_file(write: Write, tmp_path: Path, key_line) -> None:  # type: ignore[no-untyped-def]
    ak = write("ak", key_line() + "\n")
    ca = write("ca.pub", key_line("ca") + "\n")
    loaded = _load(None, {}, state_dir=tmp_path, authorized_keys=ak, cert_authority=ca)
    assert (len(loaded.dynamic.auth.keys), len(loaded.dynamic.auth.cas)) == (1, 1)


def test_failing_forwarding_test_refuses_the_config(write: Write, tmp_path: Path) -> None:
    cfg = write(
        "c.toml",
        f'state_dir = "{tmp_path}"\n[forwarding]\ndefault = "allow"\n'
        '[[forwarding.tests]]\ntarget = "db.internal:5432"\nexpect = "deny"\n',
    )
    errors = _errors(cfg)
    assert any("forwarding.tests[1]" in e for e in errors), errors


def test_flags_reach_toml_listeners_and_tables(write: Write, tmp_path: Path) -> None:
    cfg = write(
        "c.toml",
        f'state_dir = "{tmp_path}"\n[[listeners]]\ntransport = "tls"\nlisten = "127.0.0.1:0"\n'
        '[listeners.tls]\nacme_domains = ["a.example"]\n'
        '[[listeners]]\ntransport = "iroh"\n[auth]\nprovider = "chain"\n',
    )
    assert any("acme_agree_tos" in e for e in _errors(cfg))
    static = _load(cfg, acme_agree_tos=True, iroh_relay=("disabled",), record_calls=True).static
    tls, iroh = static.listeners
    assert (tls.acme_domains, tls.acme_agree_tos, iroh.iroh_relays) == (("a.example",), True, ("disabled",))
    assert (static.flowgraph.enabled, static.flowgraph.record_calls) == (
        True,
        True,
    )  # record_calls turns it on
    errors = _errors(cfg, acme_agree_tos=True, storage=False)
    assert any("auth.provider: chain needs storage (--no-storage)" in e for e in errors), errors


def test_namespace_constant_flags(tmp_path: Path) -> None:
    ns = argparse.Namespace(
        no_socks5=True, no_storage=False, forward=["1:a:1"], stealth=True, acme_domain=None
    )
    ov = Overrides.from_namespace(ns, cwd=tmp_path)
    assert (ov.socks5, ov.storage, ov.forwards, ov.stealth, ov.acme_domains) == (
        "off",
        None,
        ("1:a:1",),
        True,
        None,
    )


def test_config_modules_are_light() -> None:
    import subprocess
    import sys

    code = (
        "import alknet.core.config.sources, alknet.core.config.reloader, sys; "
        "assert not {'asyncssh', 'aioquic', 'iroh'} & set(sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
