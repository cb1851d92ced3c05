"""``ConfigIdentityProvider``: identities from the ``AuthPolicy`` of the current ``DynamicConfig``.

Light module (no asyncssh). Never raises for malformed input; has no backend that could fail.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from alknet.core.auth.authorized_keys import KeyEntry
from alknet.core.auth.identity import CredentialKind, Identity, IdentityProvider, KeyOptions
from alknet.core.auth.keys import is_fingerprint
from alknet.core.auth.policy import AuthPolicy
from alknet.core.auth.token import TokenVerdict, check_token

if TYPE_CHECKING:
    from alknet.core.config.atomic import AtomicRef
    from alknet.core.config.dynamic import DynamicConfig

__all__ = ["ConfigIdentityProvider"]

_API_KEY_PREFIX = "alk_"


class _PolicyProvider(IdentityProvider):
    """Answers from whatever ``AuthPolicy`` ``_policy()`` returns at call time."""

    _now: Callable[[], float]

    @abstractmethod
    def _policy(self) -> AuthPolicy:
        """The policy to answer from."""

    def _entry(self, fingerprint: object, kind: object) -> KeyEntry | None:
        if not is_fingerprint(fingerprint) or not isinstance(kind, str):
            return None
        try:
            credential_kind = CredentialKind(kind)
        except ValueError:
            return None
        return self._policy().lookup(fingerprint, credential_kind)

    async def resolve_from_fingerprint(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> Identity | None:
        entry = self._entry(fingerprint, kind)
        return None if entry is None else Identity(entry.fingerprint, entry.scopes)

    async def resolve_from_token(
        self, token: str, *, remote_ip: IPv4Address | IPv6Address | None = None
    ) -> Identity | None:
        if not isinstance(token, str) or token.startswith(_API_KEY_PREFIX):
            return None  # API keys live in storage only
        verdict, entry = check_token(token, self._policy(), now=self._now(), remote_ip=remote_ip)
        if verdict is not TokenVerdict.OK or entry is None:
            return None
        return Identity(entry.fingerprint, entry.scopes)

    async def credential_options(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> KeyOptions:
        entry = self._entry(fingerprint, kind)
        return KeyOptions() if entry is None else entry.options


class _PinnedConfigProvider(_PolicyProvider):
    """A ``ConfigIdentityProvider`` view fixed to one ``AuthPolicy`` (one connection's auth phase)."""

    def __init__(self, policy: AuthPolicy, now: Callable[[], float]) -> None:
        self._pinned_policy = policy
        self._now = now

    def _policy(self) -> AuthPolicy:
        return self._pinned_policy

    def pinned(self) -> IdentityProvider:
        return self

    def __repr__(self) -> str:
        return f"ConfigIdentityProvider(pinned {self._pinned_policy!r})"


class ConfigIdentityProvider(_PolicyProvider):
    """Resolves keys, CAs and signed tokens from ``dynamic.load().auth`` at call time.

    Entries without ``alknet-scopes=`` have scopes ``("relay:connect",)``; ``resources`` is always empty;
    ``alk_`` API keys always resolve to ``None``. ``pinned()`` binds to the ``AuthPolicy`` current at that
    moment.
    """

    def __init__(self, dynamic: AtomicRef[DynamicConfig], *, now: Callable[[], float] = time.time) -> None:
        self._dynamic = dynamic
        self._now = now

    def _policy(self) -> AuthPolicy:
        return self._dynamic.load().auth

    def pinned(self) -> IdentityProvider:
        return _PinnedConfigProvider(self._policy(), self._now)

    def __repr__(self) -> str:
        return f"ConfigIdentityProvider({self._policy()!r})"
