"""``ConfigReloader``: validate-then-swap, logging, the lock, restart_required (auth-and-config.md §6)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.reloader import (
    NO_KEYS_WARNING,
    AuthParts,
    ConfigReloader,
    build_dynamic,
    warn_if_no_authorized_keys,
)
from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.errors import ConfigError
from alknet.core.logfmt import quote
from alknet.core.policy.forwarding import ForwardingPolicy

Write = Callable[[str, str], Path]
OK = 'level=INFO msg="config reload" result=ok'


def _setup(write: Write, tmp_path: Path, logs: Any, toml: str, env: dict[str, str] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    cfg = write("config.toml", f'state_dir = "{tmp_path / "state"}"\n' + toml)
    sources = ConfigSources(Overrides(config=cfg, **kw), env or {}, cwd=tmp_path)
    reloader = ConfigReloader.from_loaded(sources.load(), sources, logs.logger)
    return cfg, reloader


def test_config_error_is_value_error_and_dynamic_config_is_frozen() -> None:
    assert issubclass(ConfigError, ValueError)
    config = DynamicConfig()
    for name, value in (("auth", None), ("forwarding", None), ("rate_limits", RateLimits())):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate_limits.max_auth_attempts = 1  # type: ignore[misc]


async def test_bad_authorized_keys_line_keeps_old_config(
    write: Write, tmp_path: Path, logs: Any, key_line
) -> None:  # type: ignore[no-untyped-def]
    good = key_line("good")
    ak = write("ak", good + "\n")
    _, reloader = _setup(write, tmp_path, logs, f'[auth]\nauthorized_keys = "{ak}"\n')
    before = reloader.ref.load()
    assert len(before.auth.keys) == 1
    ak.write_text(good + "\n" + key_line(options='command="x"') + "\n")
    with pytest.raises(ConfigError) as info:
        await reloader.reload_from_sources()
    assert info.value.errors[0].startswith(f"{ak}:2:")
    assert reloader.ref.load() is before
    expected = f'level=ERROR msg="config reload" result=error error={quote(info.value.errors[0])}'
    assert logs.lines[-1] == expected
    # the same via the API, with bytes
    with pytest.raises(ConfigError, match=r"^authorized_keys:1:"):
        await reloader.reload_auth(authorized_keys=b"garbage\n")
    assert reloader.ref.load() is before
    # fixed file: new keys apply
    new = key_line("new")
    ak.write_text(good + "\n" + new + "\n")
    after = await reloader.reload_from_sources()
    assert len(after.auth.keys) == 2 and reloader.ref.load() is after
    assert logs.lines[-1] == OK


async def test_failing_forwarding_tests_are_refused(write: Write, tmp_path: Path, logs: Any) -> None:
    cfg, reloader = _setup(write, tmp_path, logs, '[forwarding]\ndefault = "allow"\n')
    before = reloader.ref.load()
    bad = {"default": "allow", "tests": [{"target": "db.internal:5432", "expect": "deny"}]}
    with pytest.raises(ConfigError, match=r"forwarding\.tests\[1\]"):
        await reloader.reload_forwarding(bad)
    assert reloader.ref.load() is before
    assert 'result=error error="forwarding.tests[1]' in logs.lines[-1]
    cfg.write_text(cfg.read_text() + '[[forwarding.tests]]\ntarget = "db.internal:5432"\nexpect = "deny"\n')
    with pytest.raises(ConfigError, match=r"forwarding\.tests\[1\]"):
        await reloader.reload_from_sources()
    assert reloader.ref.load() is before
    deny = await reloader.reload_forwarding(
        {"default": "deny", "tests": [{"target": "a:1", "expect": "deny"}]}
    )
    assert str(deny.forwarding.default) == "deny" and deny.auth is before.auth
    with pytest.raises(ConfigError):
        await reloader.reload_forwarding({"defualt": "deny"})
    assert reloader.ref.load() is deny


async def test_reload_forwarding_object_and_reload_all(write: Write, tmp_path: Path, logs: Any) -> None:
    _, reloader = _setup(write, tmp_path, logs, "")
    policy = ForwardingPolicy.from_mapping({"default": "deny"})
    result = await reloader.reload_forwarding(policy)
    assert result.forwarding is policy
    failing = ForwardingPolicy.from_mapping({"tests": [{"target": "a:1", "expect": "deny"}]})
    with pytest.raises(ConfigError):
        await reloader.reload_forwarding(failing)
    with pytest.raises(ConfigError):
        await reloader.reload_all(DynamicConfig(forwarding=failing))
    assert reloader.ref.load() is result
    new = DynamicConfig(rate_limits=RateLimits(max_auth_attempts=2))
    assert await reloader.reload_all(new) is new and reloader.ref.load() is new


async def test_concurrent_reload_auth_both_apply(tmp_path: Path, logs: Any, key_line) -> None:  # type: ignore[no-untyped-def]
    ref: AtomicRef[DynamicConfig] = AtomicRef(DynamicConfig())
    reloader = ConfigReloader(ref, None, logs.logger)
    ca_path = tmp_path / "ca.pub"
    ca_path.write_text(key_line("ca") + "\n")
    ak = (key_line("a") + "\n" + key_line("b") + "\n").encode()
    await asyncio.gather(
        reloader.reload_auth(authorized_keys=ak), reloader.reload_auth(cert_authority=ca_path)
    )
    auth = ref.load().auth
    assert (len(auth.keys), len(auth.cas)) == (2, 1)
    assert logs.lines == [OK, OK]
    # a part left None keeps its text
    await reloader.reload_auth(authorized_keys=key_line("c").encode())
    assert (len(ref.load().auth.keys), len(ref.load().auth.cas)) == (1, 1)
    parts = reloader.auth_parts
    assert parts is not None and parts.cert_authority_source == str(ca_path)


async def test_reload_auth_keeps_token_settings(tmp_path: Path, logs: Any, key_line) -> None:  # type: ignore[no-untyped-def]
    parts = AuthParts()
    ref = AtomicRef(
        DynamicConfig(auth=parts.build(token_enabled=False, token_max_age=60, evict_revoked=True))
    )
    reloader = ConfigReloader(ref, None, logs.logger, auth_parts=parts)
    auth = (await reloader.reload_auth(authorized_keys=key_line().encode())).auth
    assert (auth.token_enabled, auth.token_max_age, auth.evict_revoked, len(auth.keys)) == (
        False,
        60,
        True,
        1,
    )
    with pytest.raises(ConfigError, match="no such file"):
        await reloader.reload_auth(cert_authority=tmp_path / "missing")


async def test_partial_reload_auth_after_reload_all_needs_both_parts(logs: Any, key_line) -> None:  # type: ignore[no-untyped-def]
    parts = AuthParts(authorized_keys=key_line() + "\n")
    reloader = ConfigReloader(AtomicRef(DynamicConfig()), None, logs.logger)
    await reloader.reload_all(DynamicConfig(auth=parts.build()))
    with pytest.raises(ConfigError, match="both"):
        await reloader.reload_auth(authorized_keys=b"")
    await reloader.reload_auth(authorized_keys=b"", cert_authority=b"")
    assert reloader.ref.load().auth.empty
    await reloader.reload_all(DynamicConfig(auth=parts.build()), auth_parts=parts)
    assert len((await reloader.reload_auth(cert_authority=b"")).auth.keys) == 1


async def test_reload_from_sources_without_sources(logs: Any) -> None:
    reloader = ConfigReloader(AtomicRef(DynamicConfig()), None, logs.logger)
    with pytest.raises(ConfigError, match="no configuration sources"):
        await reloader.reload_from_sources()


async def test_static_change_logs_restart_required(write: Write, tmp_path: Path, logs: Any) -> None:
    cfg, reloader = _setup(
        write, tmp_path, logs, '[auth]\nprovider = "config"\n[rate_limits]\nmax_auth_attempts = 7\n'
    )
    running = reloader.static
    assert running is not None
    cfg.write_text(cfg.read_text().replace('"config"', '"chain"').replace("= 7", "= 4"))
    result = await reloader.reload_from_sources()
    assert logs.lines == ['level=WARNING msg="config reload" restart_required="auth.provider"', OK]
    assert result.rate_limits.max_auth_attempts == 4  # dynamic part applied
    assert reloader.static is running and running.auth_provider == "config"  # the running provider stays
    cfg.write_text(cfg.read_text() + '[[listeners]]\nlisten = "127.0.0.1:0"\ntransport = "tls"\n')
    await reloader.reload_from_sources()
    assert logs.lines[-2] == 'level=WARNING msg="config reload" restart_required="listeners, auth.provider"'


async def test_captured_flags_and_env_keep_precedence_on_reload(
    write: Write, tmp_path: Path, logs: Any
) -> None:
    env = {"ALKNET_MAX_AUTH_ATTEMPTS": "5"}
    cfg, reloader = _setup(write, tmp_path, logs, "[rate_limits]\nmax_auth_attempts = 7\n", env)
    assert reloader.ref.load().rate_limits.max_auth_attempts == 5
    cfg.write_text(cfg.read_text().replace("= 7", "= 4"))
    assert (await reloader.reload_from_sources()).rate_limits.max_auth_attempts == 5
    _, flagged = _setup(
        write, tmp_path, logs, "[rate_limits]\nmax_auth_attempts = 7\n", env, max_auth_attempts=3
    )
    assert (await flagged.reload_from_sources()).rate_limits.max_auth_attempts == 3


async def test_on_swap_hook(logs: Any) -> None:
    seen: list[tuple[DynamicConfig, DynamicConfig]] = []

    async def hook(old: DynamicConfig, new: DynamicConfig) -> None:
        seen.append((old, new))

    first = DynamicConfig()
    reloader = ConfigReloader(AtomicRef(first), None, logs.logger, on_swap=hook)
    new = await reloader.reload_all(DynamicConfig(rate_limits=RateLimits(max_connections_per_ip=1)))
    assert seen == [(first, new)]


def test_no_authorized_keys_warning(logs: Any, key_line) -> None:  # type: ignore[no-untyped-def]
    assert warn_if_no_authorized_keys(DynamicConfig(), "config", logs.logger)
    assert logs.lines == [f'level=WARNING msg="{NO_KEYS_WARNING}"']
    assert not warn_if_no_authorized_keys(DynamicConfig(), "storage", logs.logger)
    keyed = DynamicConfig(auth=AuthParts(authorized_keys=key_line() + "\n").build())
    assert not warn_if_no_authorized_keys(keyed, "config", logs.logger)
    assert len(logs.lines) == 1


def test_build_dynamic_collects_every_error(tmp_path: Path, key_line) -> None:  # type: ignore[no-untyped-def]
    failing = {"tests": [{"target": "a:1", "expect": "deny"}]}
    with pytest.raises(ConfigError) as info:
        build_dynamic(b"garbage\n", tmp_path / "missing.pub", forwarding=failing)
    assert len(info.value.errors) == 2 and "missing.pub" in info.value.errors[0]
    assert info.value.errors[1].startswith("forwarding.tests[1]")
    loaded = build_dynamic(
        (key_line() + "\n").encode(),
        forwarding=ForwardingPolicy.from_mapping({"default": "deny"}),
        rate_limits=RateLimits(max_auth_attempts=1),
        token_max_age=42,
    )
    dyn = loaded.dynamic
    assert (len(dyn.auth.keys), dyn.auth.token_max_age, str(dyn.forwarding.default)) == (1, 42, "deny")
    assert loaded.static is None and loaded.auth_parts.authorized_keys_source == "authorized_keys"
    warned = build_dynamic(
        forwarding={"rules": [{"target": "10.0.0.0/8", "action": "deny"}]}, proxy="socks5://p:1"
    )
    assert warned.warnings == ("address rules do not apply to host names behind an outbound proxy",)
