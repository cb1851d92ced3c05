"""auth-and-config.md §1: ConfigIdentityProvider answers from the current DynamicConfig.auth."""

from __future__ import annotations

import dataclasses
import hashlib
from ipaddress import IPv4Address, ip_network

import pytest
from auth_helpers import REF_FP, REF_LINE, REF_TOKEN, REF_TS, line_of, new_key, ref_key

from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import (
    ChainIdentityProvider,
    CredentialKind,
    Identity,
    IdentityProvider,
    KeyOptions,
)
from alknet.core.auth.keys import public_key_of
from alknet.core.auth.policy import AuthPolicy
from alknet.core.auth.token import mint_token
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig

CA = CredentialKind.CERT_AUTHORITY


def make(text: str, **kw: object) -> tuple[ConfigIdentityProvider, AtomicRef[DynamicConfig]]:
    ref = AtomicRef(DynamicConfig(auth=AuthPolicy.from_texts(text, source="ak", **kw)))  # type: ignore[arg-type]
    return ConfigIdentityProvider(ref, now=lambda: REF_TS), ref


def reload(ref: AtomicRef[DynamicConfig], text: str) -> None:
    ref.store(dataclasses.replace(ref.load(), auth=AuthPolicy.from_texts(text, source="ak")))


async def test_known_key_gets_default_scopes_and_no_resources() -> None:
    provider, _ = make(REF_LINE)
    ident = await provider.resolve_from_fingerprint(REF_FP)
    assert ident == Identity(REF_FP, ("relay:connect",))
    assert ident is not None and dict(ident.resources) == {}
    assert isinstance(provider, IdentityProvider)


async def test_scopes_from_the_line() -> None:
    provider, _ = make(f'alknet-scopes="node:w1,admin:status" {REF_LINE}')
    assert await provider.resolve_from_fingerprint(REF_FP) == Identity(REF_FP, ("admin:status", "node:w1"))
    provider, _ = make(f'alknet-scopes="" {REF_LINE}')
    assert await provider.resolve_from_fingerprint(REF_FP) == Identity(REF_FP, ())


async def test_malformed_fingerprints_resolve_to_none() -> None:
    provider, _ = make(REF_LINE)
    md5 = hashlib.md5(public_key_of(ref_key()).blob).hexdigest()
    for fp in (
        "sha256:" + REF_FP[7:],
        REF_FP + "=",
        "MD5:" + ":".join(md5[i : i + 2] for i in range(0, 32, 2)),
        REF_FP[:-1],
        REF_FP + "x",
        "",
        "SHA256:",
        "x" * 1_000_000,
    ):
        assert await provider.resolve_from_fingerprint(fp) is None
        assert await provider.resolve_from_fingerprint(fp, kind=CA) is None
        assert await provider.credential_options(fp) == KeyOptions()
    for value in (None, 1, REF_FP.encode()):
        assert await provider.resolve_from_fingerprint(value) is None  # type: ignore[arg-type]
        assert await provider.resolve_from_token(value) is None  # type: ignore[arg-type]
    # kinds given as their string values work; anything else is no kind at all
    assert await provider.resolve_from_fingerprint(REF_FP, kind="key") is not None  # type: ignore[arg-type]
    assert await provider.resolve_from_fingerprint(REF_FP, kind="cert-authority") is None  # type: ignore[arg-type]
    assert await provider.resolve_from_fingerprint(REF_FP, kind="bogus") is None  # type: ignore[arg-type]
    assert await provider.credential_options(REF_FP, kind=None) == KeyOptions()  # type: ignore[arg-type]


async def test_kinds_are_separated() -> None:
    ca_key = new_key()
    ca_fp = public_key_of(ca_key).fingerprint
    provider, _ = make(f'{REF_LINE}\ncert-authority,alknet-scopes="deploy:run" {line_of(ca_key)}\n')
    assert await provider.resolve_from_fingerprint(ca_fp) is None
    assert await provider.resolve_from_fingerprint(REF_FP, kind=CA) is None
    assert await provider.resolve_from_fingerprint(ca_fp, kind=CA) == Identity(ca_fp, ("deploy:run",))
    assert await provider.resolve_from_fingerprint(REF_FP, kind=CredentialKind.KEY) == Identity(
        REF_FP, ("relay:connect",)
    )


async def test_credential_options() -> None:
    ca_key = new_key()
    ca_fp = public_key_of(ca_key).fingerprint
    provider, _ = make(
        f'restrict,from="10.0.0.0/8" {REF_LINE}\ncert-authority,principals="deploy" {line_of(ca_key)}\n'
    )
    assert await provider.credential_options(REF_FP) == KeyOptions(
        from_networks=(ip_network("10.0.0.0/8"),), no_port_forwarding=True
    )
    assert await provider.credential_options(ca_fp, kind=CA) == KeyOptions(principals=frozenset({"deploy"}))
    # wrong kind or unknown: no entry, default options
    assert await provider.credential_options(ca_fp) == KeyOptions()
    assert await provider.credential_options(REF_FP, kind=CA) == KeyOptions()


async def test_tokens() -> None:
    provider, ref = make(f'alknet-scopes="a" {REF_LINE}')
    assert await provider.resolve_from_token(REF_TOKEN) == Identity(REF_FP, ("a",))
    assert await provider.resolve_from_token(REF_TOKEN, remote_ip=IPv4Address("127.0.0.1")) == Identity(
        REF_FP, ("a",)
    )
    assert await provider.resolve_from_token(REF_TOKEN[:-1] + "t") is None
    assert await provider.resolve_from_token(mint_token(ref_key(), REF_TS - 301)) is None
    assert await provider.resolve_from_token(mint_token(new_key(), REF_TS)) is None
    # the token identity equals the fingerprint identity
    assert await provider.resolve_from_token(REF_TOKEN) == await provider.resolve_from_fingerprint(REF_FP)
    # disabled tokens
    ref.store(dataclasses.replace(ref.load(), auth=dataclasses.replace(ref.load().auth, token_enabled=False)))
    assert await provider.resolve_from_token(REF_TOKEN) is None
    assert await provider.resolve_from_fingerprint(REF_FP) == Identity(REF_FP, ("a",))


async def test_token_max_age_and_from_come_from_the_current_policy() -> None:
    provider, _ = make(f'from="10.0.0.0/8" {REF_LINE}', token_max_age=30)
    late = mint_token(ref_key(), REF_TS - 31)
    ok = mint_token(ref_key(), REF_TS - 30)
    ip = IPv4Address("10.0.0.9")
    assert await provider.resolve_from_token(late, remote_ip=ip) is None
    assert await provider.resolve_from_token(ok, remote_ip=ip) == Identity(REF_FP, ("relay:connect",))
    assert await provider.resolve_from_token(ok) is None
    assert await provider.resolve_from_token(ok, remote_ip=IPv4Address("127.0.0.1")) is None


async def test_the_clock_is_read_at_call_time() -> None:
    clock = [float(REF_TS)]
    ref = AtomicRef(DynamicConfig(auth=AuthPolicy.from_texts(REF_LINE, source="ak")))
    provider = ConfigIdentityProvider(ref, now=lambda: clock[0])
    assert await provider.resolve_from_token(REF_TOKEN) is not None
    clock[0] += 301
    assert await provider.resolve_from_token(REF_TOKEN) is None


async def test_api_keys_always_resolve_to_none() -> None:
    provider, _ = make(REF_LINE)
    for value in ("alk_" + "A" * 43, "alk_" + "A" * 42, "alk_", "alk_" + "x" * 135):
        assert await provider.resolve_from_token(value) is None


async def test_answers_come_from_the_current_config_and_pinned_binds_one_policy() -> None:
    other = new_key()
    other_fp = public_key_of(other).fingerprint
    provider, ref = make(REF_LINE)
    pinned = provider.pinned()
    assert pinned.pinned() is pinned
    reload(ref, line_of(other))
    # the live provider sees the reload at once
    assert await provider.resolve_from_fingerprint(REF_FP) is None
    assert await provider.resolve_from_fingerprint(other_fp) == Identity(other_fp, ("relay:connect",))
    assert await provider.resolve_from_token(REF_TOKEN) is None
    # the pinned view keeps answering from the policy current when it was made
    assert await pinned.resolve_from_fingerprint(REF_FP) == Identity(REF_FP, ("relay:connect",))
    assert await pinned.resolve_from_fingerprint(other_fp) is None
    assert await pinned.resolve_from_token(REF_TOKEN) == Identity(REF_FP, ("relay:connect",))
    assert await pinned.credential_options(REF_FP) == KeyOptions()
    # a new pin sees the new policy
    assert await provider.pinned().resolve_from_fingerprint(other_fp) is not None


async def test_chain_of_one_config_provider_behaves_the_same() -> None:
    provider, ref = make(f"restrict {REF_LINE}")
    chain = ChainIdentityProvider([provider])
    assert await chain.resolve_from_fingerprint(REF_FP) == await provider.resolve_from_fingerprint(REF_FP)
    assert await chain.credential_options(REF_FP) == KeyOptions(no_port_forwarding=True)
    pinned = chain.pinned()
    reload(ref, "")
    assert await chain.resolve_from_fingerprint(REF_FP) is None
    assert await pinned.resolve_from_fingerprint(REF_FP) == Identity(REF_FP, ("relay:connect",))


def test_repr_shows_no_key_material() -> None:
    provider, _ = make(REF_LINE)
    text = repr(provider) + repr(provider.pinned())
    assert "keys=1" in text
    assert REF_LINE.split()[1] not in text and REF_FP not in text


@pytest.mark.parametrize("kind", list(CredentialKind))
async def test_empty_config_resolves_nothing(kind: CredentialKind) -> None:
    provider, _ = make("")
    assert await provider.resolve_from_fingerprint(REF_FP, kind=kind) is None
    assert await provider.resolve_from_token(REF_TOKEN) is None
