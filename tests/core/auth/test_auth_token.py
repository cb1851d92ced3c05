"""auth-and-config.md §5.1: signed timestamp tokens, the verdict order, the reference vector, redaction."""

from __future__ import annotations

import base64
import logging
import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from auth_helpers import REF_FP, REF_LINE, REF_TOKEN, REF_TOKEN_KEY_ID, REF_TS, line_of, new_key, ref_key

import alknet.core.auth.token as token_mod
from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import Identity
from alknet.core.auth.policy import AuthPolicy
from alknet.core.auth.token import (
    TOKEN_LENGTH,
    TokenVerdict,
    check_token,
    decode_token,
    mint_token,
    redact_text,
    redact_url,
    verify_token,
)
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig

V = TokenVerdict


def policy(text: str = REF_LINE, **kw: object) -> AuthPolicy:
    return AuthPolicy.from_texts(text, source="ak", **kw)  # type: ignore[arg-type]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def raw_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=")


# ------------------------------------------------------------------------------------------ vector


def test_mint_token_reproduces_the_reference_vector() -> None:
    assert mint_token(ref_key(), REF_TS) == REF_TOKEN
    assert len(REF_TOKEN) == TOKEN_LENGTH == 139


def test_decode_token_fields() -> None:
    decoded = decode_token(REF_TOKEN)
    assert decoded is not None
    key_id, ts, sig = decoded
    assert key_id.hex() == REF_TOKEN_KEY_ID
    assert ts == REF_TS
    assert len(sig) == 64
    ref_key().public_key().verify(sig, key_id + ts.to_bytes(8, "big"))


@pytest.mark.parametrize("now", [1_700_000_000, 1_699_999_700, 1_700_000_300, 1_700_000_300.0])
def test_vector_verifies_inside_the_window(now: float) -> None:
    assert verify_token(REF_TOKEN, policy(), now=now) is V.OK


@pytest.mark.parametrize("now", [1_699_999_699, 1_700_000_301, 1_700_000_300.5, 0, 2**63])
def test_vector_expires_outside_the_window_in_both_directions(now: float) -> None:
    assert verify_token(REF_TOKEN, policy(), now=now) is V.EXPIRED


def test_max_age_comes_from_the_policy_unless_passed() -> None:
    p = policy(token_max_age=60)
    assert verify_token(REF_TOKEN, p, now=REF_TS + 60) is V.OK
    assert verify_token(REF_TOKEN, p, now=REF_TS + 61) is V.EXPIRED
    assert verify_token(REF_TOKEN, p, now=REF_TS + 61, max_age=300) is V.OK
    assert verify_token(REF_TOKEN, policy(), now=REF_TS + 200, max_age=100) is V.EXPIRED


# ------------------------------------------------------------------------------------------ MALFORMED


def _malformed_variants() -> dict[str, str]:
    t = REF_TOKEN
    assert t[-1] == "s"
    return {
        "last-char-s-to-t": t[:-1] + "t",
        "padding-appended": t + "=",
        "138-chars": t[:-1],
        "140-chars": t + "A",
        "plus": t[:50] + "+" + t[51:],
        "slash": t[:50] + "/" + t[51:],
        "leading-space": " " + t[1:],
        "trailing-newline": t[:-1] + "\n",
        "tab": t[:20] + "\t" + t[21:],
        "empty": "",
        "non-ascii-digit": t[:10] + "\uff11" + t[11:],
    }


@pytest.mark.parametrize(("name", "token"), sorted(_malformed_variants().items()))
def test_malformed(name: str, token: str) -> None:
    assert decode_token(token) is None
    assert verify_token(token, policy(), now=REF_TS) is V.MALFORMED


def test_non_string_tokens_are_malformed() -> None:
    for value in (None, 42, REF_TOKEN.encode(), [REF_TOKEN]):
        assert decode_token(value) is None
        assert verify_token(value, policy(), now=REF_TS) is V.MALFORMED


def test_10_mb_token_returns_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> bytes:
        raise AssertionError("decoded")

    monkeypatch.setattr(token_mod.base64, "urlsafe_b64decode", boom)
    huge = "A" * 10_000_000
    start = time.perf_counter()
    assert verify_token(huge, policy(), now=REF_TS) is V.MALFORMED
    assert decode_token(huge) is None
    assert time.perf_counter() - start < 0.5
    # and the decoder really is what is patched: a well-formed token now reaches it
    with pytest.raises(AssertionError, match="decoded"):
        decode_token(REF_TOKEN)


# ------------------------------------------------------------------------------------------ other verdicts


def test_unknown_key() -> None:
    assert verify_token(REF_TOKEN, policy(line_of(new_key())), now=REF_TS) is V.UNKNOWN_KEY
    assert verify_token(REF_TOKEN, policy(""), now=REF_TS) is V.UNKNOWN_KEY
    # listed only as a certificate authority: CA keys never sign tokens
    assert verify_token(REF_TOKEN, policy(f"cert-authority {REF_LINE}"), now=REF_TS) is V.UNKNOWN_KEY
    assert verify_token(REF_TOKEN, policy("", cert_authority=REF_LINE), now=REF_TS) is V.UNKNOWN_KEY


def test_bad_signature() -> None:
    raw = bytearray(raw_of(REF_TOKEN))
    raw[40 + 17] ^= 0x04
    assert verify_token(b64url(bytes(raw)), policy(), now=REF_TS) is V.BAD_SIGNATURE
    # key_id of another listed key with the original signature
    other = new_key()
    other_token = mint_token(other, REF_TS)
    swapped = b64url(raw_of(other_token)[:32] + raw_of(REF_TOKEN)[32:])
    both = policy(f"{REF_LINE}\n{line_of(other)}\n")
    assert verify_token(swapped, both, now=REF_TS) is V.BAD_SIGNATURE
    assert verify_token(other_token, both, now=REF_TS) is V.OK
    # a changed timestamp invalidates the signature
    raw = bytearray(raw_of(REF_TOKEN))
    raw[39] ^= 0x01
    assert verify_token(b64url(bytes(raw)), policy(), now=REF_TS) is V.BAD_SIGNATURE


def test_not_permitted() -> None:
    p = policy(f'from="10.0.0.0/8" {REF_LINE}')
    assert verify_token(REF_TOKEN, p, now=REF_TS) is V.NOT_PERMITTED
    assert verify_token(REF_TOKEN, p, now=REF_TS, remote_ip=None) is V.NOT_PERMITTED
    assert verify_token(REF_TOKEN, p, now=REF_TS, remote_ip=IPv4Address("127.0.0.1")) is V.NOT_PERMITTED
    assert verify_token(REF_TOKEN, p, now=REF_TS, remote_ip=IPv4Address("10.1.2.3")) is V.OK
    assert verify_token(REF_TOKEN, p, now=REF_TS, remote_ip=IPv6Address("::ffff:10.1.2.3")) is V.OK
    for opt in ("restrict", "no-port-forwarding"):
        assert verify_token(REF_TOKEN, policy(f"{opt} {REF_LINE}"), now=REF_TS) is V.NOT_PERMITTED
    # no from= restriction: any or no address is fine
    assert verify_token(REF_TOKEN, policy(), now=REF_TS, remote_ip=IPv6Address("2001:db8::1")) is V.OK


def test_disabled_beats_everything() -> None:
    p = policy(token_enabled=False)
    for token in (REF_TOKEN, "", "A" * 10_000_000, REF_TOKEN + "="):
        assert verify_token(token, p, now=REF_TS) is V.DISABLED


def test_verdict_order() -> None:
    far = REF_TS + 10_000
    # malformed beats unknown key
    assert verify_token(REF_TOKEN + "=", policy(""), now=far) is V.MALFORMED
    # unknown key beats a bad signature and expiry
    raw = bytearray(raw_of(REF_TOKEN))
    raw[100] ^= 1
    assert verify_token(b64url(bytes(raw)), policy(line_of(new_key())), now=far) is V.UNKNOWN_KEY
    # bad signature beats expiry and restrictions
    assert verify_token(b64url(bytes(raw)), policy(f"restrict {REF_LINE}"), now=far) is V.BAD_SIGNATURE
    # expiry beats restrictions
    assert verify_token(REF_TOKEN, policy(f"restrict {REF_LINE}"), now=far) is V.EXPIRED


def test_check_token_returns_the_entry_on_ok_only() -> None:
    p = policy(f'alknet-scopes="a" {REF_LINE} c')
    verdict, entry = check_token(REF_TOKEN, p, now=REF_TS)
    assert verdict is V.OK and entry is not None and entry.scopes == ("a",)
    assert check_token(REF_TOKEN, p, now=REF_TS + 1000) == (V.EXPIRED, None)


def test_mint_token_validates_the_timestamp() -> None:
    for bad in (-1, 2**64, True, 1.5):
        with pytest.raises(ValueError):
            mint_token(ref_key(), bad)  # type: ignore[arg-type]
    assert decode_token(mint_token(ref_key(), 2**64 - 1)) is not None


def test_verdict_values() -> None:
    assert [v.value for v in V] == [
        "ok",
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_permitted",
        "disabled",
    ]


# ------------------------------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://h/x?token={REF_TOKEN}", "https://h/x?token=REDACTED"),
        (f"https://h/x?a=1&token={REF_TOKEN}&b=2#frag", "https://h/x?a=1&token=REDACTED&b=2#frag"),
        ("https://h/x?token=&b=2", "https://h/x?token=REDACTED&b=2"),
        ("https://h/x?token", "https://h/x?token=REDACTED"),
        ("https://h/x?%74oken=abc", "https://h/x?%74oken=REDACTED"),
        ("https://h/x?Token=abc;token=def", "https://h/x?Token=REDACTED;token=REDACTED"),
        ("https://h/x?tokens=abc&mytoken=x", "https://h/x?tokens=abc&mytoken=x"),
        ("https://h/token=abc", "https://h/token=abc"),
        ("https://h/x#?token=abc", "https://h/x#?token=abc"),
        ("/path?token=a&token=b", "/path?token=REDACTED&token=REDACTED"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text() -> None:
    api_key = "alk_" + "B" * 43
    text = f"bad token {REF_TOKEN} and key {api_key}, talk_to me; 'alk_x' ok"
    out = redact_text(text)
    assert out == "bad token <redacted> and key <redacted>, talk_to me; '<redacted>' ok"
    # 138 and 140 character words are not token-shaped; a token inside a longer run is not a word
    assert redact_text("a" * 138) == "a" * 138
    assert redact_text("a" * 140) == "a" * 140
    assert redact_text(f"token={REF_TOKEN}&x") == "token=<redacted>&x"
    assert redact_text(f'"{REF_TOKEN}"') == '"<redacted>"'


async def test_logs_of_token_checks_contain_no_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ref = AtomicRef(DynamicConfig(auth=policy(f"{REF_LINE}\n")))
    provider = ConfigIdentityProvider(ref, now=lambda: REF_TS)
    good = REF_TOKEN
    bad = REF_TOKEN[:-1] + "t"
    expired = mint_token(ref_key(), REF_TS - 5000)
    assert await provider.resolve_from_token(good) == Identity(REF_FP, ("relay:connect",))
    assert await provider.resolve_from_token(bad) is None
    assert await provider.resolve_from_token(expired) is None
    for t in (good, bad, expired):
        assert t not in caplog.text
        assert t[:40] not in caplog.text
        assert t not in repr(provider) and t not in repr(ref.load().auth)
