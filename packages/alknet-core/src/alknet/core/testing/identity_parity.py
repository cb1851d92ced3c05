"""The shared identity-provider parity suite (auth-and-config.md §1 "Parity").

A *factory* takes a sequence of ``PrincipalSpec`` and builds a provider in which each principal has exactly
those scopes and no resources; it returns a ``ParitySubject`` whose ``set_principals`` replaces the principal
set in place (config: a reload; storage: removing/revoking rows), so the "removed and reloaded" case can run.

``run_parity_case(factory, case)`` builds the standard principals, runs one case, asserts the result equals
the case's expectation and returns it, so two providers that pass every case give ``==`` results. Both
``tests/core/auth/test_identity_parity.py`` and ``tests/storage/test_identity_parity.py`` parametrise over
``PARITY_CASES``. Light module: no pytest, no asyncssh.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.identity import CredentialKind, Identity, IdentityProvider, KeyOptions
from alknet.core.auth.keys import PublicKey, public_key_of
from alknet.core.auth.token import mint_token

__all__ = [
    "PARITY_CASES",
    "ParityCase",
    "ParityContext",
    "ParityFactory",
    "ParitySubject",
    "PrincipalSpec",
    "authorized_keys_text",
    "config_parity_factory",
    "parity_key",
    "run_parity_case",
    "standard_principals",
]


def parity_key(name: str) -> Ed25519PrivateKey:
    """A deterministic test key, so every provider under test sees the same principals."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"alknet-parity:" + name.encode()).digest())


@dataclass(frozen=True, slots=True, repr=False)
class PrincipalSpec:
    """One principal: its key, whether it is a user key or a CA, and exactly the scopes it must get."""

    private_key: Ed25519PrivateKey
    kind: CredentialKind = CredentialKind.KEY
    scopes: tuple[str, ...] = ()

    @property
    def public_key(self) -> PublicKey:
        return public_key_of(self.private_key)

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    def identity(self) -> Identity:
        return Identity(self.fingerprint, self.scopes)

    def __repr__(self) -> str:
        return f"PrincipalSpec({self.kind.value} {self.fingerprint} scopes={list(self.scopes)})"


@dataclass(frozen=True, slots=True)
class ParitySubject:
    """A provider under test and the way to replace its principal set in place."""

    provider: IdentityProvider
    set_principals: Callable[[Sequence[PrincipalSpec]], Awaitable[None]]


ParityFactory = Callable[[Sequence[PrincipalSpec]], Awaitable[ParitySubject]]


@dataclass(slots=True)
class ParityContext:
    """What a case sees: the subject, the standard principals by name, an unlisted key and the clock."""

    subject: ParitySubject
    principals: dict[str, PrincipalSpec]
    outsider: Ed25519PrivateKey
    now: int = field(default_factory=lambda: int(time.time()))

    @property
    def provider(self) -> IdentityProvider:
        return self.subject.provider

    def fp(self, name: str) -> str:
        return self.principals[name].fingerprint

    def token(self, name: str, delta: int = 0) -> str:
        return mint_token(self.principals[name].private_key, self.now + delta)


def standard_principals() -> dict[str, PrincipalSpec]:
    return {
        "alice": PrincipalSpec(parity_key("alice"), CredentialKind.KEY, ("node:w1", "relay:connect")),
        "bob": PrincipalSpec(parity_key("bob"), CredentialKind.KEY, ()),
        "dave": PrincipalSpec(parity_key("dave"), CredentialKind.KEY, ("*", "/dev1/*", "admin:status")),
        "ca": PrincipalSpec(parity_key("ca"), CredentialKind.CERT_AUTHORITY, ("deploy:run", "relay:connect")),
    }


CaseFn = Callable[[ParityContext], Awaitable[tuple[object, object]]]


@dataclass(frozen=True, slots=True)
class ParityCase:
    """One case: ``run(ctx)`` returns ``(actual, expected)``."""

    name: str
    run: CaseFn

    def __str__(self) -> str:
        return self.name


async def run_parity_case(factory: ParityFactory, case: ParityCase) -> object:
    """Build the standard principals with ``factory``, run ``case``, check its expectation, return it."""
    principals = standard_principals()
    subject = await factory(list(principals.values()))
    ctx = ParityContext(subject, principals, parity_key("outsider"))
    actual, expected = await case.run(ctx)
    if actual != expected:
        raise AssertionError(f"parity case {case.name}: got {actual!r}, expected {expected!r}")
    return actual


# ------------------------------------------------------------------------------------------------ helpers


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64url(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _trailing_bits_set(token: str) -> str:
    """Same data bytes, but the last character carries non-zero padding bits (non-canonical)."""
    value = _ALPHABET.index(token[-1])
    return token[:-1] + _ALPHABET[value | 1]


def _flip_signature_bit(token: str) -> str:
    raw = bytearray(_unb64url(token))
    raw[70] ^= 0x01
    return _b64url(bytes(raw))


def _swap_key_id(token: str, other: str) -> str:
    return _b64url(_unb64url(other)[:32] + _unb64url(token)[32:])


def _fp_case(
    name: str, principal: str | None, fp: Callable[[ParityContext], str], kind: CredentialKind
) -> ParityCase:
    async def run(ctx: ParityContext) -> tuple[object, object]:
        actual = await ctx.provider.resolve_from_fingerprint(fp(ctx), kind=kind)
        return actual, (ctx.principals[principal].identity() if principal else None)

    return ParityCase(name, run)


def _token_case(
    name: str, principal: str | None, token: Callable[[ParityContext], str], ip: IPv4Address | None = None
) -> ParityCase:
    async def run(ctx: ParityContext) -> tuple[object, object]:
        actual = await ctx.provider.resolve_from_token(token(ctx), remote_ip=ip)
        return actual, (ctx.principals[principal].identity() if principal else None)

    return ParityCase(name, run)


def _options_case(name: str, fp: Callable[[ParityContext], str], kind: CredentialKind) -> ParityCase:
    async def run(ctx: ParityContext) -> tuple[object, object]:
        return await ctx.provider.credential_options(fp(ctx), kind=kind), KeyOptions()

    return ParityCase(name, run)


def _outsider_fp(ctx: ParityContext) -> str:
    return public_key_of(ctx.outsider).fingerprint


def _md5_form(ctx: ParityContext) -> str:
    digest = hashlib.md5(ctx.principals["alice"].public_key.blob).hexdigest()
    return "MD5:" + ":".join(digest[i : i + 2] for i in range(0, 32, 2))


async def _removed_and_reloaded(ctx: ParityContext) -> tuple[object, object]:
    alice, bob = ctx.principals["alice"], ctx.principals["bob"]
    before = await ctx.provider.resolve_from_fingerprint(alice.fingerprint)
    token = ctx.token("alice")
    await ctx.subject.set_principals([p for n, p in ctx.principals.items() if n not in ("alice", "ca")])
    after = (
        await ctx.provider.resolve_from_fingerprint(alice.fingerprint),
        await ctx.provider.resolve_from_token(token),
        await ctx.provider.resolve_from_fingerprint(ctx.fp("ca"), kind=CredentialKind.CERT_AUTHORITY),
        await ctx.provider.resolve_from_fingerprint(bob.fingerprint),
    )
    return (before, *after), (alice.identity(), None, None, None, bob.identity())


async def _readded_after_removal(ctx: ParityContext) -> tuple[object, object]:
    alice = ctx.principals["alice"]
    await ctx.subject.set_principals([p for n, p in ctx.principals.items() if n != "alice"])
    gone = await ctx.provider.resolve_from_fingerprint(alice.fingerprint)
    changed = replace(alice, scopes=("relay:connect",))
    await ctx.subject.set_principals([p for n, p in ctx.principals.items() if n != "alice"] + [changed])
    back = await ctx.provider.resolve_from_fingerprint(alice.fingerprint)
    return (gone, back), (None, changed.identity())


_KEY, _CA = CredentialKind.KEY, CredentialKind.CERT_AUTHORITY
_LOOPBACK = IPv4Address("127.0.0.1")

PARITY_CASES: tuple[ParityCase, ...] = (
    # fingerprints
    _fp_case("known_key", "alice", lambda c: c.fp("alice"), _KEY),
    _fp_case("known_key_no_scopes", "bob", lambda c: c.fp("bob"), _KEY),
    _fp_case("known_key_wildcard_scopes", "dave", lambda c: c.fp("dave"), _KEY),
    _fp_case("unknown_fingerprint", None, _outsider_fp, _KEY),
    _fp_case("lowercase_sha256_prefix", None, lambda c: "sha256:" + c.fp("alice")[7:], _KEY),
    _fp_case("padded_fingerprint", None, lambda c: c.fp("alice") + "=", _KEY),
    _fp_case("md5_fingerprint", None, _md5_form, _KEY),
    _fp_case("fingerprint_too_short", None, lambda c: c.fp("alice")[:-1], _KEY),
    _fp_case("fingerprint_too_long", None, lambda c: c.fp("alice") + "A", _KEY),
    _fp_case("empty_fingerprint", None, lambda c: "", _KEY),
    _fp_case("ca_fingerprint_as_key", None, lambda c: c.fp("ca"), _KEY),
    _fp_case("key_fingerprint_as_ca", None, lambda c: c.fp("alice"), _CA),
    _fp_case("ca_fingerprint_as_ca", "ca", lambda c: c.fp("ca"), _CA),
    _fp_case("unknown_fingerprint_as_ca", None, _outsider_fp, _CA),
    # credential options of principals without restrictions
    _options_case("options_known_key", lambda c: c.fp("alice"), _KEY),
    _options_case("options_ca", lambda c: c.fp("ca"), _CA),
    _options_case("options_unknown", _outsider_fp, _KEY),
    _options_case("options_malformed", lambda c: "sha256:nope", _KEY),
    # tokens: OK
    _token_case("token_valid", "alice", lambda c: c.token("alice")),
    _token_case("token_valid_no_scopes", "bob", lambda c: c.token("bob")),
    _token_case("token_valid_with_remote_ip", "alice", lambda c: c.token("alice"), _LOOPBACK),
    _token_case("token_valid_slightly_ahead", "dave", lambda c: c.token("dave", 60)),
    # tokens: MALFORMED
    _token_case("token_trailing_bits", None, lambda c: _trailing_bits_set(c.token("alice"))),
    _token_case("token_padding_appended", None, lambda c: c.token("alice") + "="),
    _token_case("token_138_chars", None, lambda c: c.token("alice")[:-1]),
    _token_case("token_140_chars", None, lambda c: c.token("alice") + "A"),
    _token_case("token_plus", None, lambda c: (t := c.token("alice"))[:10] + "+" + t[11:]),
    _token_case("token_slash", None, lambda c: (t := c.token("alice"))[:10] + "/" + t[11:]),
    _token_case("token_leading_space", None, lambda c: " " + c.token("alice")[1:]),
    _token_case("token_10mb", None, lambda c: "A" * 10_000_000),
    _token_case("token_empty", None, lambda c: ""),
    # tokens: UNKNOWN_KEY
    _token_case("token_unlisted_key", None, lambda c: mint_token(c.outsider, c.now)),
    _token_case("token_signed_by_ca", None, lambda c: c.token("ca")),
    # tokens: BAD_SIGNATURE
    _token_case("token_flipped_signature_bit", None, lambda c: _flip_signature_bit(c.token("alice"))),
    _token_case("token_other_key_id", None, lambda c: _swap_key_id(c.token("alice"), c.token("bob"))),
    # tokens: EXPIRED (both directions)
    _token_case("token_expired", None, lambda c: c.token("alice", -3600)),
    _token_case("token_from_future", None, lambda c: c.token("alice", 3600)),
    # API keys belong to storage
    _token_case("alk_key_on_any_provider", None, lambda c: "alk_" + "A" * 43),
    _token_case("alk_key_46_chars", None, lambda c: "alk_" + "A" * 42),
    # reloads
    ParityCase("principal_removed_and_reloaded", _removed_and_reloaded),
    ParityCase("principal_readded_with_new_scopes", _readded_after_removal),
)


# ------------------------------------------------------------------------------------------------ config


def authorized_keys_text(principals: Sequence[PrincipalSpec]) -> str:
    """An authorized_keys text giving each principal exactly its scopes (always with ``alknet-scopes=``)."""
    lines = []
    for i, p in enumerate(principals, start=1):
        opts = [] if p.kind is CredentialKind.KEY else ["cert-authority"]
        opts.append(f'alknet-scopes="{",".join(p.scopes)}"')
        lines.append(f"{','.join(opts)} {p.public_key.line} parity-{i}")
    return "\n".join(lines) + "\n"


async def config_parity_factory(principals: Sequence[PrincipalSpec]) -> ParitySubject:
    """Factory for ``ConfigIdentityProvider``; ``set_principals`` swaps in a new ``AuthPolicy`` (a reload)."""
    from alknet.core.auth.config_provider import ConfigIdentityProvider
    from alknet.core.auth.policy import AuthPolicy
    from alknet.core.config.atomic import AtomicRef
    from alknet.core.config.dynamic import DynamicConfig

    def policy(ps: Sequence[PrincipalSpec]) -> AuthPolicy:
        return AuthPolicy.from_texts(authorized_keys_text(ps), source="parity")

    ref = AtomicRef(DynamicConfig(auth=policy(principals)))

    async def set_principals(ps: Sequence[PrincipalSpec]) -> None:
        ref.store(replace(ref.load(), auth=policy(ps)))

    return ParitySubject(ConfigIdentityProvider(ref), set_principals)
