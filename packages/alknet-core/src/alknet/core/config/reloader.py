"""``ConfigReloader``: validate, then swap the ``DynamicConfig`` (`auth-and-config.md` §6.2).

Every reload is serialised by one ``asyncio.Lock``, builds a complete new ``DynamicConfig`` (key files
parsed, rules built, every ``[[forwarding.tests]]`` run) and only then stores it. On any error the running
config stays, the call raises ``ConfigError`` and ``level=ERROR msg="config reload" result=error
error="..."`` is logged; success logs ``result=ok``. ``reload_from_sources()`` (SIGHUP) also reports
static keys that changed with ``level=WARNING msg="config reload" restart_required="<dotted keys>"`` and
otherwise ignores them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alknet.core import logfmt
from alknet.core.auth.policy import AuthPolicy
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.static import StaticConfig, static_diff
from alknet.core.errors import ConfigError
from alknet.core.policy.forwarding import ForwardingPolicy, check_policy_tests, proxy_warning

__all__ = [
    "NO_KEYS_WARNING",
    "AuthInput",
    "AuthParts",
    "ConfigReloader",
    "LoadedConfig",
    "ReloadSource",
    "build_dynamic",
    "build_forwarding",
    "log_config_warnings",
    "policy_warnings",
    "warn_if_no_authorized_keys",
]

NO_KEYS_WARNING = "no authorized keys configured; every login will be rejected"

#: One authorisation part for ``reload_auth``: a path (``str`` or path-like) or the file content as bytes.
AuthInput = str | os.PathLike[str] | bytes
Logger = logging.Logger | logging.LoggerAdapter[Any]
SwapHook = Callable[[DynamicConfig, DynamicConfig], Awaitable[None] | None]

_DEFAULT_LOGGER = logging.getLogger("alknet.core.config")


# ------------------------------------------------------------------------------------ building blocks


@dataclass(frozen=True, slots=True)
class AuthParts:
    """The two authorisation texts last applied; ``reload_auth`` replaces one and keeps the other."""

    authorized_keys: str = ""
    authorized_keys_source: str = "authorized_keys"
    cert_authority: str | None = None
    cert_authority_source: str = "cert_authority"

    def build(
        self, *, token_enabled: bool = True, token_max_age: int = 300, evict_revoked: bool = False
    ) -> AuthPolicy:
        """Parse both texts into an ``AuthPolicy``; raises ``ConfigError`` (``source:line: message``)."""
        return AuthPolicy.from_texts(
            self.authorized_keys,
            source=self.authorized_keys_source,
            cert_authority=self.cert_authority,
            ca_source=self.cert_authority_source,
            token_enabled=token_enabled,
            token_max_age=token_max_age,
            evict_revoked=evict_revoked,
        )


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """One complete, validated configuration. ``static`` is ``None`` for sources without static settings."""

    static: StaticConfig | None
    dynamic: DynamicConfig
    auth_parts: AuthParts = AuthParts()
    warnings: tuple[str, ...] = ()


class ReloadSource(Protocol):
    """What ``ConfigReloader.reload_from_sources()`` re-reads."""

    def load(self) -> LoadedConfig: ...


def build_forwarding(
    mapping: Mapping[str, object], *, label: str | None = None, proxy: bool = False, check_tests: bool = True
) -> ForwardingPolicy:
    """Build a ``ForwardingPolicy`` from a mapping in the TOML shape and run all its tests (unless
    ``check_tests=False``, for ``alknet policy test``, which reports them itself).

    ``proxy``: an outbound proxy is configured (host names are not resolved, address rules never match them).
    Raises ``ConfigError`` naming dotted keys (prefixed with ``label:`` when given) or each failing test.
    """
    prefix = f"{label}: " if label else ""
    try:
        policy = ForwardingPolicy.from_mapping(mapping, prefix="forwarding")
        if check_tests:
            check_policy_tests(policy, proxy=proxy)
    except ConfigError as exc:
        raise ConfigError([prefix + e for e in exc.errors]) from None
    return policy


def policy_warnings(policy: ForwardingPolicy, proxy: str | None) -> list[str]:
    """Non-fatal findings about a policy (address deny rules behind an outbound proxy)."""
    warning = proxy_warning(policy, proxy is not None)
    return [] if warning is None else [warning]


def build_dynamic(
    authorized_keys: AuthInput | None = None,
    cert_authority: AuthInput | None = None,
    *,
    forwarding: ForwardingPolicy | Mapping[str, object] | None = None,
    rate_limits: RateLimits | None = None,
    token_enabled: bool = True,
    token_max_age: int = 300,
    evict_revoked: bool = False,
    proxy: str | None = None,
    label: str | None = None,
    check_tests: bool = True,
) -> LoadedConfig:
    """Read and validate every dynamic part and return them as a ``LoadedConfig`` without static settings.

    ``authorized_keys`` / ``cert_authority``: a path or the content as bytes; ``None`` = empty / no CA file.
    ``forwarding``: a policy or a mapping in the TOML ``[forwarding]`` shape (``None`` = the built-in policy);
    its tests are run unless ``check_tests=False``. ``label`` prefixes forwarding errors (the TOML file). Every problem of every part is
    collected into one ``ConfigError``.
    """
    errors: list[str] = []
    parts = AuthParts()
    for value, field in ((authorized_keys, "authorized_keys"), (cert_authority, "cert_authority")):
        if value is not None:
            try:
                text, source = _read_part(value, field)
            except ConfigError as exc:
                errors += exc.errors
                continue
            parts = dataclasses.replace(parts, **{field: text, f"{field}_source": source})
    auth = None
    if not errors:
        try:
            auth = parts.build(
                token_enabled=token_enabled, token_max_age=token_max_age, evict_revoked=evict_revoked
            )
        except ConfigError as exc:
            errors += exc.errors
    policy = ForwardingPolicy() if forwarding is None else forwarding
    try:
        if isinstance(policy, ForwardingPolicy):
            if check_tests:
                check_policy_tests(policy, proxy=proxy is not None)
        else:
            policy = build_forwarding(policy, label=label, proxy=proxy is not None, check_tests=check_tests)
    except ConfigError as exc:
        errors += exc.errors
    if errors or auth is None or not isinstance(policy, ForwardingPolicy):
        raise ConfigError(errors)
    dynamic = DynamicConfig(auth=auth, forwarding=policy, rate_limits=rate_limits or RateLimits())
    return LoadedConfig(None, dynamic, parts, tuple(policy_warnings(policy, proxy)))


def warn_if_no_authorized_keys(
    dynamic: DynamicConfig, provider: str = "config", logger: Logger | None = None
) -> bool:
    """Log the startup WARNING when no keys, no CAs and no storage provider are configured; True if logged."""
    if provider != "config" or not dynamic.auth.empty:
        return False
    logfmt.log_event(logger or _DEFAULT_LOGGER, logging.WARNING, NO_KEYS_WARNING)
    return True


def log_config_warnings(loaded: LoadedConfig, logger: Logger | None = None) -> None:
    """Log the non-fatal findings of a load (e.g. address rules behind an outbound proxy) as WARNING lines."""
    for text in loaded.warnings:
        logfmt.log_event(logger or _DEFAULT_LOGGER, logging.WARNING, text)


def _read_part(value: AuthInput, default_source: str) -> tuple[str, str]:
    """(text, source label) of one authorisation part; raises ``ConfigError`` naming the path."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), default_source
        except UnicodeDecodeError:
            raise ConfigError(f"{default_source}: not UTF-8 text") from None
    path = Path(os.fspath(value)).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


class ConfigReloader:
    """Hot-swaps the ``DynamicConfig`` held by ``ref``; one reload at a time.

    ``sources`` is what ``reload_from_sources()`` re-reads (a ``ConfigSources`` for a CLI-started server).
    ``static`` is the running static config, compared with the re-read one to report ``restart_required``.
    ``auth_parts`` are the authorisation texts behind ``ref``'s current auth; ``reload_auth`` with one part
    ``None`` keeps the other part's text. When they are not given and the current auth is empty, both parts
    start empty. ``on_swap(old, new)`` (sync or async) runs after every successful swap, e.g. to evict
    connections whose identity was revoked.
    """

    def __init__(
        self,
        ref: AtomicRef[DynamicConfig],
        sources: ReloadSource | None = None,
        logger: Logger | None = None,
        *,
        static: StaticConfig | None = None,
        auth_parts: AuthParts | None = None,
        on_swap: SwapHook | None = None,
    ) -> None:
        self.ref = ref
        self.sources = sources
        self.logger: Logger = logger or _DEFAULT_LOGGER
        self.static = static
        self.on_swap = on_swap
        self._parts: AuthParts | None = auth_parts
        if auth_parts is None and ref.load().auth.empty:
            self._parts = AuthParts()
        self._lock = asyncio.Lock()

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedConfig,
        sources: ReloadSource | None = None,
        logger: Logger | None = None,
        *,
        on_swap: SwapHook | None = None,
    ) -> ConfigReloader:
        """A reloader around a new ``AtomicRef`` holding ``loaded.dynamic``; share ``.ref`` with a server."""
        return cls(
            AtomicRef(loaded.dynamic),
            sources,
            logger,
            static=loaded.static,
            auth_parts=loaded.auth_parts,
            on_swap=on_swap,
        )

    @property
    def auth_parts(self) -> AuthParts | None:
        """The texts behind the current auth, or ``None`` after a ``reload_all`` without ``auth_parts``."""
        return self._parts

    # ------------------------------------------------------------------------------------------ public

    async def reload_auth(
        self, authorized_keys: AuthInput | None = None, cert_authority: AuthInput | None = None
    ) -> DynamicConfig:
        """Replace the authorised keys and/or the CA file (path or bytes); a ``None`` part keeps its text."""

        async def build(current: DynamicConfig) -> tuple[DynamicConfig, AuthParts]:
            parts = self._parts
            if parts is None and (authorized_keys is None or cert_authority is None):
                raise ConfigError(
                    "reload_auth: the running auth was installed by reload_all; give both authorized_keys "
                    "and cert_authority"
                )
            parts = parts or AuthParts()
            if authorized_keys is not None:
                text, source = await asyncio.to_thread(_read_part, authorized_keys, "authorized_keys")
                parts = dataclasses.replace(parts, authorized_keys=text, authorized_keys_source=source)
            if cert_authority is not None:
                text, source = await asyncio.to_thread(_read_part, cert_authority, "cert_authority")
                parts = dataclasses.replace(parts, cert_authority=text, cert_authority_source=source)
            old = current.auth
            auth = parts.build(
                token_enabled=old.token_enabled,
                token_max_age=old.token_max_age,
                evict_revoked=old.evict_revoked,
            )
            return dataclasses.replace(current, auth=auth), parts

        return await self._run(build)

    async def reload_forwarding(self, policy: ForwardingPolicy | Mapping[str, object]) -> DynamicConfig:
        """Replace the forwarding policy (an object, or a mapping in the TOML ``[forwarding]`` shape)."""

        async def build(current: DynamicConfig) -> tuple[DynamicConfig, AuthParts | None]:
            if isinstance(policy, ForwardingPolicy):
                check_policy_tests(policy, proxy=self._proxy)
                new = policy
            elif isinstance(policy, Mapping):
                new = build_forwarding(policy, proxy=self._proxy)
            else:
                raise ConfigError("forwarding: expected a ForwardingPolicy or a mapping")
            self._log_warnings(policy_warnings(new, self.static.proxy if self.static else None))
            return dataclasses.replace(current, forwarding=new), self._parts

        return await self._run(build)

    async def reload_all(
        self, config: DynamicConfig, *, auth_parts: AuthParts | None = None
    ) -> DynamicConfig:
        """Replace the whole dynamic config (its forwarding tests must pass).

        ``auth_parts``: the texts ``config.auth`` was built from; without them a later partial
        ``reload_auth`` needs both parts.
        """

        async def build(current: DynamicConfig) -> tuple[DynamicConfig, AuthParts | None]:
            if not isinstance(config, DynamicConfig):
                raise ConfigError("reload_all: expected a DynamicConfig")
            check_policy_tests(config.forwarding, proxy=self._proxy)
            return config, auth_parts

        return await self._run(build)

    async def reload_from_sources(self) -> DynamicConfig:
        """Re-read the TOML file and every file it names (captured flags and environment keep precedence)."""

        async def build(current: DynamicConfig) -> tuple[DynamicConfig, AuthParts | None]:
            if self.sources is None:
                raise ConfigError("no configuration sources to reload from")
            loaded = await asyncio.to_thread(self.sources.load)
            if self.static is not None and loaded.static is not None:
                changed = static_diff(self.static, loaded.static)
                if changed:
                    logfmt.config_reload_restart_required(changed).emit(self.logger)
            self._log_warnings(loaded.warnings)
            return loaded.dynamic, loaded.auth_parts

        return await self._run(build)

    # ---------------------------------------------------------------------------------------- internals

    @property
    def _proxy(self) -> bool:
        return self.static is not None and self.static.proxy is not None

    def _log_warnings(self, warnings: tuple[str, ...] | list[str]) -> None:
        for text in warnings:
            logfmt.log_event(self.logger, logging.WARNING, text)

    async def _run(
        self, build: Callable[[DynamicConfig], Awaitable[tuple[DynamicConfig, AuthParts | None]]]
    ) -> DynamicConfig:
        async with self._lock:
            current = self.ref.load()
            try:
                new, parts = await build(current)
            except ConfigError as exc:
                logfmt.config_reload_error(exc).emit(self.logger)
                raise
            except ValueError as exc:  # a value check inside a config object
                error = ConfigError(str(exc))
                logfmt.config_reload_error(error).emit(self.logger)
                raise error from exc
            self.ref.store(new)
            self._parts = parts
            logfmt.config_reload_ok().emit(self.logger)
            if self.on_swap is not None:
                try:
                    result = self.on_swap(current, new)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.logger.error("config reload hook failed", exc_info=True)
            return new
