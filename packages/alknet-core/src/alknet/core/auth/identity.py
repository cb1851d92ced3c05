"""The authenticated ``Identity`` and the ``IdentityProvider`` protocol.

Light module: imports only the standard library (no asyncssh, aioquic or iroh).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from alknet.core.policy.forwarding import Target

__all__ = [
    "SCOPE_RE",
    "ChainIdentityProvider",
    "CredentialKind",
    "Identity",
    "IdentityProvider",
    "KeyOptions",
    "validate_scope",
]

SCOPE_RE = re.compile(r"[A-Za-z0-9/*][A-Za-z0-9:._/*-]{0,127}")


def validate_scope(scope: object) -> str:
    """Return ``scope`` if it is a valid scope string, else raise ``ValueError`` (the value is not echoed if huge)."""
    if not isinstance(scope, str) or SCOPE_RE.fullmatch(scope) is None:
        shown = repr(scope) if isinstance(scope, str) and len(scope) <= 64 else "value"
        raise ValueError(f"invalid scope {shown}")
    return scope


def _norm_resources(resources: Mapping[str, Sequence[str]]) -> Mapping[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for key in sorted(resources):
        if not isinstance(key, str):
            raise ValueError("resource keys must be strings")
        values = resources[key]
        if isinstance(values, str):
            raise ValueError(f"resources[{key!r}] must be a list of strings")
        vals = set()
        for v in values:
            if not isinstance(v, str):
                raise ValueError(f"resources[{key!r}] must be a list of strings")
            vals.add(v)
        out[key] = tuple(sorted(vals))
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of an authenticated connection.

    ``scopes`` are normalised (sorted, unique) and ``resources`` is a read-only mapping with sorted keys and sorted
    unique values, so two identities built from the same facts compare equal.
    """

    id: str
    scopes: tuple[str, ...] = ()
    resources: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("Identity.id must be a non-empty string")
        if isinstance(self.scopes, str):
            raise ValueError("Identity.scopes must be a sequence of strings, not a string")
        scopes = tuple(sorted({validate_scope(s) for s in self.scopes}))
        object.__setattr__(self, "scopes", scopes)
        object.__setattr__(self, "resources", _norm_resources(self.resources))

    def __hash__(self) -> int:
        return hash((self.id, self.scopes, tuple(self.resources.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return (
            self.id == other.id
            and self.scopes == other.scopes
            and dict(self.resources) == dict(other.resources)
        )

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scopes": list(self.scopes),
            "resources": {k: list(v) for k, v in self.resources.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Identity:
        if not isinstance(obj, Mapping):
            raise ValueError("identity must be an object")
        unknown = set(obj) - {"id", "scopes", "resources"}
        if unknown:
            raise ValueError(f"unknown identity field {sorted(unknown)[0]!r}")
        ident = obj.get("id")
        scopes = obj.get("scopes", [])
        resources = obj.get("resources", {})
        if not isinstance(scopes, list | tuple):
            raise ValueError("identity scopes must be a list")
        if not isinstance(resources, Mapping):
            raise ValueError("identity resources must be an object")
        return cls(ident, tuple(scopes), resources)  # type: ignore[arg-type]


class CredentialKind(StrEnum):
    KEY = "key"
    CERT_AUTHORITY = "cert-authority"


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """Restrictions carried by one credential (an authorized_keys line or a storage credential)."""

    from_networks: tuple[IPv4Network | IPv6Network, ...] | None = None
    principals: frozenset[str] | None = None  # CA entries only
    permitopen: tuple[Target, ...] | None = None
    no_port_forwarding: bool = False

    def allows_address(self, ip: IPv4Address | IPv6Address | None) -> bool:
        """``from=`` check: no restriction -> True; restriction and unknown address -> False."""
        if self.from_networks is None:
            return True
        if ip is None:
            return False
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.from_networks)


@runtime_checkable
class IdentityProvider(Protocol):
    """Resolves credentials to identities. Providers subclass it explicitly to inherit the default bodies of
    ``credential_options`` and ``pinned``.

    The two ``resolve_*`` methods never raise for malformed input (they return ``None``); a failing backend raises
    ``alknet.core.errors.IdentityBackendError``.
    """

    async def resolve_from_fingerprint(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> Identity | None: ...

    async def resolve_from_token(
        self, token: str, *, remote_ip: IPv4Address | IPv6Address | None = None
    ) -> Identity | None: ...

    async def credential_options(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> KeyOptions:
        return KeyOptions()

    def pinned(self) -> IdentityProvider:
        return self


class ChainIdentityProvider(IdentityProvider):
    """Asks each provider in order; the first non-``None`` answer wins. Member exceptions propagate."""

    def __init__(self, providers: Sequence[IdentityProvider]) -> None:
        self.providers: tuple[IdentityProvider, ...] = tuple(providers)

    def __repr__(self) -> str:
        return f"ChainIdentityProvider({len(self.providers)} providers)"

    async def resolve_from_fingerprint(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> Identity | None:
        for p in self.providers:
            ident = await p.resolve_from_fingerprint(fingerprint, kind=kind)
            if ident is not None:
                return ident
        return None

    async def resolve_from_token(
        self, token: str, *, remote_ip: IPv4Address | IPv6Address | None = None
    ) -> Identity | None:
        for p in self.providers:
            ident = await p.resolve_from_token(token, remote_ip=remote_ip)
            if ident is not None:
                return ident
        return None

    async def credential_options(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> KeyOptions:
        for p in self.providers:
            if await p.resolve_from_fingerprint(fingerprint, kind=kind) is not None:
                return await p.credential_options(fingerprint, kind=kind)
        return KeyOptions()

    def pinned(self) -> IdentityProvider:
        return ChainIdentityProvider([p.pinned() for p in self.providers])
