"""AuthPolicy: fingerprint, CA and token key id indexes; from_texts; immutability; repr with counts."""

from __future__ import annotations

import dataclasses

import pytest
from auth_helpers import REF_FP, REF_LINE, line_of, new_key, ref_key

from alknet.core.auth.authorized_keys import AuthorizedKeysError, parse_authorized_keys
from alknet.core.auth.identity import CredentialKind
from alknet.core.auth.keys import public_key_of, token_key_id
from alknet.core.auth.policy import AuthPolicy


def test_from_texts_splits_keys_and_cas_and_indexes_them() -> None:
    user, ca, ca2 = ref_key(), new_key(), new_key()
    user_pub, ca_pub, ca2_pub = public_key_of(user), public_key_of(ca), public_key_of(ca2)
    policy = AuthPolicy.from_texts(
        f"{line_of(user)}\ncert-authority {line_of(ca)}\n",
        source="authorized_keys",
        cert_authority=line_of(ca2) + "\n",
        ca_source="ca.pub",
    )
    assert [e.fingerprint for e in policy.keys] == [REF_FP]
    assert [e.fingerprint for e in policy.cas] == [ca_pub.fingerprint, ca2_pub.fingerprint]
    key_entry = policy.key(REF_FP)
    assert key_entry is not None and key_entry.kind is CredentialKind.KEY
    ca_entry = policy.ca(ca2_pub.fingerprint)
    assert ca_entry is not None and ca_entry.kind is CredentialKind.CERT_AUTHORITY
    # kinds never cross
    assert policy.ca(REF_FP) is None
    assert policy.key(ca_pub.fingerprint) is None
    assert policy.lookup(REF_FP, CredentialKind.CERT_AUTHORITY) is None
    assert policy.lookup(ca_pub.fingerprint, CredentialKind.CERT_AUTHORITY) is not None
    # token index: plain keys only
    assert policy.token_entry(token_key_id(user_pub.raw)) is key_entry
    assert policy.token_entry(token_key_id(ca_pub.raw)) is None
    assert policy.token_entry(token_key_id(ca2_pub.raw)) is None
    assert policy.token_entry(b"\x00" * 32) is None
    assert not policy.empty
    assert AuthPolicy().empty


def test_errors_of_both_files_are_reported_together() -> None:
    with pytest.raises(AuthorizedKeysError) as exc:
        AuthPolicy.from_texts(
            f'command="x" {REF_LINE}\n',
            source="ak",
            cert_authority=f"{line_of(new_key())}\nssh-rsa AAAA\n",
            ca_source="ca",
        )
    assert exc.value.errors == [
        'ak:1: unknown option "command"',
        "ca:2: unsupported key type ssh-rsa (only ssh-ed25519 is accepted)",
    ]


def test_same_key_in_both_files_is_an_error() -> None:
    with pytest.raises(AuthorizedKeysError) as exc:
        AuthPolicy.from_texts(f"{line_of(new_key())}\n{REF_LINE}\n", source="ak", cert_authority=REF_LINE)
    assert exc.value.errors == [f"cert_authority:1: duplicate key {REF_FP} (also in ak:2)"]


def test_repr_shows_counts_only() -> None:
    policy = AuthPolicy.from_texts(
        f"{REF_LINE}\n{line_of(new_key())}\ncert-authority {line_of(new_key())}\n", source="ak"
    )
    assert repr(policy) == (
        "AuthPolicy(keys=2, cas=1, token_enabled=True, token_max_age=300, evict_revoked=False)"
    )
    assert REF_FP not in repr(policy) and REF_LINE.split()[1] not in repr(policy)


def test_policy_is_frozen_and_replace_rebuilds_the_indexes() -> None:
    policy = AuthPolicy.from_texts(REF_LINE, source="ak")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.keys = ()  # type: ignore[misc]
    emptied = dataclasses.replace(policy, keys=())
    assert emptied.key(REF_FP) is None
    assert policy.key(REF_FP) is not None
    assert AuthPolicy.from_texts(REF_LINE, source="ak") == policy
    assert emptied != policy


def test_token_settings_are_validated() -> None:
    assert AuthPolicy(token_max_age=1).token_max_age == 1
    assert AuthPolicy(token_max_age=3600).token_max_age == 3600
    for bad in (0, 3601, -5, True, 1.5):
        with pytest.raises(ValueError, match=r"auth\.token\.max_age must be an integer from 1 to 3600"):
            AuthPolicy(token_max_age=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuthPolicy(token_enabled="yes")  # type: ignore[arg-type]
    p = AuthPolicy.from_texts("", source="ak", token_enabled=False, token_max_age=60, evict_revoked=True)
    assert (p.token_enabled, p.token_max_age, p.evict_revoked) == (False, 60, True)


def test_entries_of_the_wrong_kind_are_refused() -> None:
    [ca_entry] = parse_authorized_keys(f"cert-authority {REF_LINE}", source="ak")
    [key_entry] = parse_authorized_keys(REF_LINE, source="ak")
    with pytest.raises(ValueError, match=r"AuthPolicy\.keys holds a cert-authority entry"):
        AuthPolicy(keys=(ca_entry,))
    with pytest.raises(ValueError, match=r"AuthPolicy\.cas holds a key entry"):
        AuthPolicy(cas=(key_entry,))
    with pytest.raises(ValueError, match="duplicate key"):
        AuthPolicy(keys=(key_entry, key_entry))
