"""``AuthPolicy``: the hot-swapped auth part of ``DynamicConfig`` (key entries, CA entries, token settings).

Light module. Immutable; a reload builds a new object. ``repr`` shows counts only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from alknet.core.auth.authorized_keys import AuthorizedKeysError, KeyEntry, parse_authorized_keys
from alknet.core.auth.identity import CredentialKind

__all__ = ["TOKEN_MAX_AGE_LIMIT", "AuthPolicy"]

TOKEN_MAX_AGE_LIMIT = 3600


@dataclass(frozen=True, slots=True, repr=False)
class AuthPolicy:
    """Authorised user keys (``kind=KEY``) and certificate authorities (``kind=CERT_AUTHORITY``), indexed by
    fingerprint, plus the token key-id index (plain keys only; CA keys never sign tokens)."""

    keys: tuple[KeyEntry, ...] = ()
    cas: tuple[KeyEntry, ...] = ()
    token_enabled: bool = True
    token_max_age: int = 300
    evict_revoked: bool = False
    _keys_by_fp: Mapping[str, KeyEntry] = field(default_factory=dict, init=False, compare=False, hash=False)
    _cas_by_fp: Mapping[str, KeyEntry] = field(default_factory=dict, init=False, compare=False, hash=False)
    _by_key_id: Mapping[bytes, KeyEntry] = field(default_factory=dict, init=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        keys, cas = tuple(self.keys), tuple(self.cas)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "cas", cas)
        if not isinstance(self.token_enabled, bool) or not isinstance(self.evict_revoked, bool):
            raise ValueError("auth.token.enabled and auth.evict_revoked must be booleans")
        age = self.token_max_age
        if isinstance(age, bool) or not isinstance(age, int) or not 1 <= age <= TOKEN_MAX_AGE_LIMIT:
            raise ValueError(f"auth.token.max_age must be an integer from 1 to {TOKEN_MAX_AGE_LIMIT}")
        by_fp: dict[str, KeyEntry] = {}
        by_ca: dict[str, KeyEntry] = {}
        by_id: dict[bytes, KeyEntry] = {}
        for entry in keys:
            if entry.kind is not CredentialKind.KEY:
                raise ValueError(f"AuthPolicy.keys holds a {entry.kind.value} entry ({entry.fingerprint})")
            if entry.fingerprint in by_fp:
                raise ValueError(f"duplicate key {entry.fingerprint}")
            by_fp[entry.fingerprint] = entry
            by_id[entry.token_key_id] = entry
        for entry in cas:
            if entry.kind is not CredentialKind.CERT_AUTHORITY:
                raise ValueError(f"AuthPolicy.cas holds a {entry.kind.value} entry ({entry.fingerprint})")
            if entry.fingerprint in by_ca or entry.fingerprint in by_fp:
                raise ValueError(f"duplicate key {entry.fingerprint}")
            by_ca[entry.fingerprint] = entry
        object.__setattr__(self, "_keys_by_fp", MappingProxyType(by_fp))
        object.__setattr__(self, "_cas_by_fp", MappingProxyType(by_ca))
        object.__setattr__(self, "_by_key_id", MappingProxyType(by_id))

    def __repr__(self) -> str:
        return (
            f"AuthPolicy(keys={len(self.keys)}, cas={len(self.cas)}, token_enabled={self.token_enabled}, "
            f"token_max_age={self.token_max_age}, evict_revoked={self.evict_revoked})"
        )

    @property
    def empty(self) -> bool:
        """No keys and no CAs: every login with this policy alone will be rejected."""
        return not self.keys and not self.cas

    def key(self, fingerprint: str) -> KeyEntry | None:
        """The plain-key entry with this fingerprint (never a CA)."""
        return self._keys_by_fp.get(fingerprint)

    def ca(self, fingerprint: str) -> KeyEntry | None:
        """The certificate-authority entry with this fingerprint (never a plain key)."""
        return self._cas_by_fp.get(fingerprint)

    def lookup(self, fingerprint: str, kind: CredentialKind = CredentialKind.KEY) -> KeyEntry | None:
        return self.key(fingerprint) if kind is CredentialKind.KEY else self.ca(fingerprint)

    def token_entry(self, key_id: bytes) -> KeyEntry | None:
        """The plain-key entry whose token key id (SHA-256 of the raw public key) is ``key_id``."""
        return self._by_key_id.get(key_id)

    @classmethod
    def from_texts(
        cls,
        authorized_keys: str,
        *,
        source: str,
        cert_authority: str | None = None,
        ca_source: str = "cert_authority",
        token_enabled: bool = True,
        token_max_age: int = 300,
        evict_revoked: bool = False,
    ) -> AuthPolicy:
        """Build a policy from an ``authorized_keys`` text (KEY and ``cert-authority`` lines) and an optional
        cert-authority text (every line a CA line). Errors of both files are reported together in one
        ``AuthorizedKeysError``; a key present in both files is an error on the cert-authority file's line."""
        errors: list[str] = []
        main: tuple[KeyEntry, ...] = ()
        extra: tuple[KeyEntry, ...] = ()
        try:
            main = parse_authorized_keys(authorized_keys, source=source)
        except AuthorizedKeysError as exc:
            errors.extend(exc.errors)
        if cert_authority is not None:
            try:
                extra = parse_authorized_keys(cert_authority, source=ca_source, implicit_ca=True)
            except AuthorizedKeysError as exc:
                errors.extend(exc.errors)
        seen = {e.fingerprint: e.line_no for e in main}
        for entry in extra:
            if entry.fingerprint in seen:
                errors.append(
                    f"{ca_source}:{entry.line_no}: duplicate key {entry.fingerprint} "
                    f"(also in {source}:{seen[entry.fingerprint]})"
                )
        if errors:
            raise AuthorizedKeysError(errors)
        everything = main + extra
        return cls(
            keys=tuple(e for e in everything if e.kind is CredentialKind.KEY),
            cas=tuple(e for e in everything if e.kind is CredentialKind.CERT_AUTHORITY),
            token_enabled=token_enabled,
            token_max_age=token_max_age,
            evict_revoked=evict_revoked,
        )
