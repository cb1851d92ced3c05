"""The complete ``cli.md`` §12 example loads (with its key and certificate files created under a temp dir)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.config.static import DEFAULT_ACME_DIRECTORY

EXAMPLE = (Path(__file__).parent / "cli_example.toml").read_text(encoding="utf-8")  # cli.md §12, verbatim


def _example(tmp_path: Path, key_line: Callable[..., str]) -> Path:
    etc = tmp_path / "etc"
    le = tmp_path / "le"
    for directory in (etc, le):
        directory.mkdir()
    for name in ("host_key", "endpoint_key"):
        (etc / name).write_text("placeholder; existence is what the loader checks\n")
    (le / "fullchain.pem").write_text("cert\n")
    (le / "privkey.pem").write_text("key\n")
    (etc / "authorized_keys").write_text(key_line("a", 'alknet-scopes="ops"') + "\n" + key_line("b") + "\n")
    (etc / "ca.pub").write_text(key_line("ca") + "\n")
    text = (
        EXAMPLE.replace("/etc/letsencrypt/live/example.com/", f"{le}/")
        .replace("/etc/alknet/", f"{etc}/")
        .replace("/var/lib/alknet", str(tmp_path / "state"))
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_full_example_loads(tmp_path: Path, key_line: Callable[..., str]) -> None:
    path = _example(tmp_path, key_line)
    loaded = ConfigSources(Overrides(config=path), {}, cwd=tmp_path).load()
    static, dyn = loaded.static, loaded.dynamic
    assert static is not None
    etc = tmp_path / "etc"
    assert static.state_dir == tmp_path / "state"
    assert static.config_path == path
    assert (static.host_key, static.endpoint_key) == (etc / "host_key", etc / "endpoint_key")
    assert static.proxy == "socks5://127.0.0.1:9050"
    assert (static.login_timeout, static.connect_timeout, static.stealth_timeout) == (30.0, 10.0, 10.0)
    assert (static.keepalive_interval, static.keepalive_count, static.max_frame) == (15.0, 3, 16777216)
    tls, iroh, raw = static.listeners
    assert (tls.url, tls.stealth, tls.tls_cert, tls.tls_key) == (
        "tls://0.0.0.0:443",
        True,
        tmp_path / "le" / "fullchain.pem",
        tmp_path / "le" / "privkey.pem",
    )
    assert tls.acme_directory == DEFAULT_ACME_DIRECTORY
    assert (iroh.url, iroh.iroh_relays) == ("iroh://0.0.0.0:0", ())
    assert (raw.url, raw.interface, raw.insecure_plaintext) == ("raw+tcp://127.0.0.1:7000", "raw", False)
    assert static.auth_provider == "config"
    assert (static.storage.enabled, static.storage.busy_timeout_ms, static.storage.readers) == (True, 5000, 4)
    assert (static.flowgraph.enabled, static.flowgraph.record_calls) == (False, False)
    assert static.secret.key_version == 2 and not static.secret.enabled
    client = static.client
    assert (client.server, client.transport, client.user, client.socks5) == (
        "example.com:443",
        "tls",
        "alknet",
        "127.0.0.1:1080",
    )
    assert client.peer is None and client.tls_pin is None and client.proxy is None  # "" = unset
    assert client.identity == Path("~/.local/share/alknet/id_ed25519").expanduser()
    assert (client.forwards, client.remote_forwards) == (("5432:db.internal:5432",), ())
    assert (static.worker.node, static.worker.services, static.worker.modules) == (
        "dev1",
        ("storage",),
        ("mypkg.tools:register",),
    )
    assert len(dyn.auth.keys) == 2 and len(dyn.auth.cas) == 1
    assert (dyn.auth.token_enabled, dyn.auth.token_max_age, dyn.auth.evict_revoked) == (True, 300, False)
    assert (dyn.rate_limits.max_connections_per_ip, dyn.rate_limits.max_auth_attempts) == (5, 3)
    assert str(dyn.forwarding.default) == "deny" and len(dyn.forwarding.rules) == 2
    assert len(dyn.forwarding.tests) == 1
    assert loaded.auth_parts.authorized_keys_source == str(etc / "authorized_keys")
    assert loaded.auth_parts.cert_authority_source == str(etc / "ca.pub")
