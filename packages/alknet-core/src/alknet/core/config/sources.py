"""Configuration sources: the ``--config`` TOML file, ``ALKNET_*`` variables and command-line overrides.

Precedence per key: CLI flag > environment > TOML > built-in default (`cli.md` §13). The flags and
variables are captured once (``ConfigSources(overrides, env)``); every ``load()`` re-reads the TOML file and
the files it names, so a reload (SIGHUP) applies the same overrides again. Everything is validated before
anything is returned.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alknet.core.config.checks import ACTIONS
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.environment import EnvValues, parse_env
from alknet.core.config.merge import build_static, first
from alknet.core.config.overrides import Overrides, override_errors
from alknet.core.config.reloader import LoadedConfig, build_dynamic
from alknet.core.config.static import StaticConfig, Table, resolve_path, server_file_errors
from alknet.core.errors import ConfigError
from alknet.core.state import resolve_state_dir

__all__ = ["ConfigSources", "EnvValues", "Overrides", "parse_env"]

_TOP_KEYS: tuple[str, ...] = ("state_dir", "server", "listeners", "auth", "rate_limits", "forwarding")
_TOP_KEYS += ("storage", "flowgraph", "secret", "client", "worker")


class ConfigSources:
    """The flags and environment captured at start, plus the ``--config`` file re-read on every ``load()``.

    ``check_server_files``: also require that the explicitly named server key, endpoint key and TLS files
    exist (``serve``); commands that do not use them pass ``False``.
    """

    def __init__(
        self,
        overrides: Overrides | None = None,
        env: Mapping[str, str] | None = None,
        *,
        check_server_files: bool = True,
        cwd: Path | None = None,
    ) -> None:
        base = cwd or Path.cwd()
        ov = overrides or Overrides()
        absolute: dict[str, Any] = {
            f.name: resolve_path(str(value), base)
            for f in dataclasses.fields(ov)
            if isinstance(value := getattr(ov, f.name), Path) and not value.is_absolute()
        }
        self.overrides = dataclasses.replace(ov, **absolute)
        self.cwd = base
        self._environ = dict(os.environ if env is None else env)
        errors = override_errors(self.overrides)
        try:
            self.env = parse_env(self._environ, cwd=base)
        except ConfigError as exc:
            errors += exc.errors
        if errors:
            raise ConfigError(errors)
        self.check_server_files = check_server_files

    @property
    def config_path(self) -> Path | None:
        path: Path | None = first(self.overrides.config, self.env.config)
        return path

    def _read_toml(self) -> tuple[dict[str, Any], str, Path]:
        path = self.config_path
        if path is None:
            return {}, "config", self.cwd
        label = str(path)
        try:
            with path.open("rb") as fh:
                return tomllib.load(fh), label, path.parent
        except FileNotFoundError:
            raise ConfigError(f"{label}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{label}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{label}: invalid TOML: not UTF-8") from None

    def load_static(self) -> StaticConfig:
        """Only the static part (no authorized_keys or policy files are read); raises ``ConfigError``."""
        return self._load(dynamic=False).static  # type: ignore[return-value]

    def load(self, *, check_tests: bool = True) -> LoadedConfig:
        """Read and validate everything (TOML, key files, policy and, unless ``check_tests=False``, its
        ``[[forwarding.tests]]``); raises ``ConfigError``."""
        return self._load(dynamic=True, check_tests=check_tests)

    def _load(self, *, dynamic: bool, check_tests: bool = True) -> LoadedConfig:
        doc, label, base = self._read_toml()
        errors: list[str] = []
        top = Table(doc, "", errors, label)
        tables = {name: top.table(name) for name in _TOP_KEYS if name not in ("state_dir", "listeners")}
        toml_state = top.path("state_dir", base)
        toml_listeners = top.tables("listeners")
        top.finish()
        ov, env = self.overrides, self.env
        state_dir = resolve_state_dir(ov.state_dir, self._environ, toml_state)
        if not state_dir.is_absolute():
            state_dir = self.cwd / state_dir
        static = build_static(tables, toml_listeners, base, ov, env, state_dir, errors, label)
        static = dataclasses.replace(static, config_path=self.config_path)
        if self.check_server_files and not errors:
            errors += server_file_errors(static)
        if not dynamic:
            if errors:
                raise ConfigError(errors)
            return LoadedConfig(static, DynamicConfig())
        auth = tables["auth"] or Table({}, "auth", errors, label)
        token = auth.table("token") or Table({}, "auth.token", errors, label)
        rl = tables["rate_limits"] or Table({}, "rate_limits", errors, label)
        ak_path = first(ov.authorized_keys, env.authorized_keys, auth.path("authorized_keys", base))
        ca_path = first(ov.cert_authority, env.cert_authority, auth.path("cert_authorities", base))
        if ak_path is None and (static.state_dir / "authorized_keys").exists():
            ak_path = static.state_dir / "authorized_keys"  # the default; serve creates it empty
        settings: dict[str, Any] = {
            "token_enabled": first(ov.token_auth, token.boolean("enabled"), True),
            "token_max_age": first(token.integer("max_age", 1, 3600), 300),
            "evict_revoked": first(auth.boolean("evict_revoked"), False),
        }
        limits = (
            first(
                ov.max_connections_per_ip, env.max_connections_per_ip, rl.integer("max_connections_per_ip", 0)
            ),
            first(ov.max_auth_attempts, env.max_auth_attempts, rl.integer("max_auth_attempts", 0)),
        )
        for t in (auth, token, rl):
            t.finish()
        fwd: dict[str, Any] = dict(tables["forwarding"].data) if tables["forwarding"] else {}
        if (override := first(ov.forwarding_default, env.forwarding_default)) is not None:
            if fwd.get("default", "allow") not in ACTIONS:
                errors.append(f"{label}: forwarding.default: must be one of allow, deny")
            fwd["default"] = override
        try:
            loaded = build_dynamic(
                ak_path,
                ca_path,
                forwarding=fwd,
                rate_limits=RateLimits(first(limits[0], 0), first(limits[1], 10)),
                proxy=static.proxy,
                label=label if self.config_path else None,
                check_tests=check_tests,
                **settings,
            )
        except ConfigError as exc:
            raise ConfigError(errors + exc.errors) from None
        if errors:
            raise ConfigError(errors)
        return dataclasses.replace(loaded, static=static)
