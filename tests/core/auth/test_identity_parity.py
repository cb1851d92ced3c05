"""The shared parity suite (auth-and-config.md §1 "Parity") on ConfigIdentityProvider and a chain of one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest

from alknet.core.auth.identity import ChainIdentityProvider, CredentialKind, Identity, IdentityProvider
from alknet.core.testing.identity_parity import (
    PARITY_CASES,
    ParityCase,
    ParityFactory,
    ParitySubject,
    PrincipalSpec,
    authorized_keys_text,
    config_parity_factory,
    run_parity_case,
    standard_principals,
)


async def chain_of_config_factory(principals: Sequence[PrincipalSpec]) -> ParitySubject:
    inner = await config_parity_factory(principals)
    return ParitySubject(ChainIdentityProvider([inner.provider]), inner.set_principals)


FACTORIES: dict[str, ParityFactory] = {
    "config": config_parity_factory,
    "chain-of-config": chain_of_config_factory,
}


@pytest.mark.parametrize("case", PARITY_CASES, ids=str)
@pytest.mark.parametrize("factory_name", sorted(FACTORIES))
async def test_parity(factory_name: str, case: ParityCase) -> None:
    await run_parity_case(FACTORIES[factory_name], case)


@pytest.mark.parametrize("case", PARITY_CASES, ids=str)
async def test_config_and_chain_give_equal_results(case: ParityCase) -> None:
    assert await run_parity_case(config_parity_factory, case) == await run_parity_case(
        chain_of_config_factory, case
    )


def test_case_names_are_unique_and_cover_the_spec_list() -> None:
    names = [c.name for c in PARITY_CASES]
    assert len(names) == len(set(names))
    for required in (
        "known_key",
        "unknown_fingerprint",
        "lowercase_sha256_prefix",
        "padded_fingerprint",
        "md5_fingerprint",
        "ca_fingerprint_as_key",
        "key_fingerprint_as_ca",
        "ca_fingerprint_as_ca",
        "token_valid",
        "token_trailing_bits",
        "token_unlisted_key",
        "token_flipped_signature_bit",
        "token_expired",
        "principal_removed_and_reloaded",
        "alk_key_on_any_provider",
    ):
        assert required in names


def test_authorized_keys_text_gives_each_principal_exactly_its_scopes() -> None:
    principals = list(standard_principals().values())
    text = authorized_keys_text(principals)
    lines = text.splitlines()
    assert len(lines) == len(principals)
    assert lines[1].startswith('alknet-scopes="" ssh-ed25519 ')
    assert lines[3].startswith('cert-authority,alknet-scopes="deploy:run,relay:connect" ssh-ed25519 ')


def test_principal_spec_repr_has_no_key_material() -> None:
    spec = standard_principals()["alice"]
    assert repr(spec) == f"PrincipalSpec(key {spec.fingerprint} scopes=['node:w1', 'relay:connect'])"
    assert spec.private_key.private_bytes_raw().hex() not in repr(spec)


# ------------------------------------------------------------------------------- the suite can fail


class _Skewed(IdentityProvider):
    """A deliberately wrong provider: adds a scope, or accepts CA keys as user keys, or forgets reloads."""

    def __init__(self, inner: IdentityProvider, mode: str) -> None:
        self.inner, self.mode = inner, mode

    async def resolve_from_fingerprint(
        self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
    ) -> Identity | None:
        if self.mode == "kind-blind":
            for k in CredentialKind:
                found = await self.inner.resolve_from_fingerprint(fingerprint, kind=k)
                if found is not None:
                    return found
            return None
        ident = await self.inner.resolve_from_fingerprint(fingerprint, kind=kind)
        if ident is not None and self.mode == "extra-scope":
            return replace(ident, scopes=(*ident.scopes, "extra"))
        return ident

    async def resolve_from_token(
        self, token: str, *, remote_ip: IPv4Address | IPv6Address | None = None
    ) -> Identity | None:
        return await self.inner.resolve_from_token(token, remote_ip=remote_ip)


def _skewed_factory(mode: str) -> ParityFactory:
    async def factory(principals: Sequence[PrincipalSpec]) -> ParitySubject:
        inner = await config_parity_factory(principals)
        if mode == "stale":
            pinned = inner.provider.pinned()  # never sees a reload
            return ParitySubject(pinned, inner.set_principals)
        return ParitySubject(_Skewed(inner.provider, mode), inner.set_principals)

    return factory


@pytest.mark.parametrize(
    ("mode", "case_name"),
    [
        ("extra-scope", "known_key"),
        ("kind-blind", "ca_fingerprint_as_key"),
        ("kind-blind", "key_fingerprint_as_ca"),
        ("stale", "principal_removed_and_reloaded"),
    ],
)
async def test_a_wrong_provider_fails_the_suite(mode: str, case_name: str) -> None:
    [case] = [c for c in PARITY_CASES if c.name == case_name]
    with pytest.raises(AssertionError, match=f"parity case {case_name}: got"):
        await run_parity_case(_skewed_factory(mode), case)
