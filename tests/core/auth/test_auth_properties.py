"""Property tests: the authorized_keys parser and the token decoder never crash or hang, and always answer
with entries, a clear one-line error per bad line, a verdict or None. 500 examples per property by default;
the ``slow`` variants run 20 000 (``uv run pytest -m slow tests/core/auth``)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from ipaddress import ip_network

import pytest
from auth_helpers import REF_FP, REF_LINE, REF_TOKEN, REF_TS, fuzz_settings, require_slow, slow_fuzz_settings
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from alknet.core.auth.authorized_keys import AuthorizedKeysError, KeyEntry, parse_authorized_keys
from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import CredentialKind
from alknet.core.auth.keys import public_key_of
from alknet.core.auth.policy import AuthPolicy
from alknet.core.auth.token import TokenVerdict, decode_token, mint_token, verify_token
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig

ERROR_RE = re.compile(r"src:(\d+): \S[^\n]*")
B64_BODY = REF_LINE.split()[1]
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 5)]
KEY_LINES = [public_key_of(k).line for k in KEYS]
POLICY = AuthPolicy.from_texts(
    f'{REF_LINE}\nfrom="10.0.0.0/8" {KEY_LINES[0]}\ncert-authority {KEY_LINES[1]}\n', source="ak"
)

# ------------------------------------------------------------------------------------------ strategies

_FRAGMENTS = [
    "restrict",
    "no-port-forwarding",
    "cert-authority",
    'principals="deploy,ops"',
    'from="10.0.0.0/8,::1"',
    'from="bad.example"',
    'permitopen="db:5432,[fd00::1]:22"',
    'permitopen="*:*"',
    'alknet-scopes="a,b"',
    'alknet-scopes=""',
    'command="x"',
    "no-pty",
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-ed25519-cert-v01@openssh.com",
    B64_BODY,
    B64_BODY[:-1],
    B64_BODY + "=",
    "AAAA",
    "#",
    '"',
    "\\",
    '\\"',
    ",",
    "=",
    " ",
    "\t",
    "\r",
    "\n",
    "\x00",
    "\u2028",
    "é",
]
fragments = st.sampled_from(_FRAGMENTS)
noise = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
lines = st.lists(st.one_of(fragments, fragments, noise), max_size=12).map("".join)
texts = st.one_of(
    st.lists(lines, max_size=8).map("\n".join),
    st.text(max_size=300),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join),
)


def _content_lines(text: str) -> list[int]:
    out = []
    for n, physical in enumerate(text.split("\n"), start=1):
        line = physical.removesuffix("\r").strip(" \t")
        if line and not line.startswith("#"):
            out.append(n)
    return out


def check_parser(text: str) -> None:
    content = _content_lines(text)
    try:
        entries = parse_authorized_keys(text, source="src")
    except AuthorizedKeysError as exc:
        numbers = []
        for err in exc.errors:
            assert err.isascii() and err.isprintable(), err
            assert len(err.splitlines()) == 1
            assert len(err) < 400
            m = ERROR_RE.fullmatch(err)
            assert m is not None, err
            numbers.append(int(m.group(1)))
        assert numbers == sorted(set(numbers))  # one error per bad line, in file order
        assert set(numbers) <= set(content)
        assert str(exc) == exc.errors[0] or str(exc).startswith(exc.errors[0] + " (and ")
        return
    assert all(isinstance(e, KeyEntry) for e in entries)
    assert [e.line_no for e in entries] == content  # no line is ever skipped
    assert len({e.fingerprint for e in entries}) == len(entries)
    for e in entries:
        assert e.raw_key.hex() not in repr(e)
    assert parse_authorized_keys(text, source="src") == entries


# A grammar of valid lines and the options they must produce.
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
scope = st.tuples(st.sampled_from(_ALNUM + "/*"), st.text(alphabet=_ALNUM + ":._/*-", max_size=10)).map(
    "".join
)
cidr = st.sampled_from(["10.0.0.0/8", "192.168.1.1", "::1", "fd00::/8", "127.0.0.0/24"])
principal = st.tuples(st.sampled_from("abcxyz"), st.text(alphabet="abcdefxyz0123_.-", max_size=8)).map(
    "".join
)


def _case(name: str, draw_case: bool) -> str:
    return name.upper() if draw_case else name


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    opts: list[str] = []
    want: dict[str, object] = {}
    if draw(st.booleans()):
        scopes = draw(st.lists(scope, max_size=4))
        opts.append(f'{_case("alknet-scopes", draw(st.booleans()))}="{",".join(scopes)}"')
        want["scopes"] = tuple(sorted(set(scopes)))
    if draw(st.booleans()):
        nets = draw(st.lists(cidr, min_size=1, max_size=3))
        opts.append(f'from="{",".join(nets)}"')
        want["from"] = tuple(ip_network(n) for n in nets)
    if draw(st.booleans()):
        opts.append(draw(st.sampled_from(["restrict", "no-port-forwarding", "Restrict"])))
        want["npf"] = True
    if draw(st.booleans()):
        opts.append("cert-authority")
        want["ca"] = True
        if draw(st.booleans()):
            names = draw(st.lists(principal, min_size=1, max_size=3))
            opts.append(f'principals="{",".join(names)}"')
            want["principals"] = frozenset(names)
    order = draw(st.permutations(opts))
    comment = draw(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\n\r"), max_size=20))
    ws = draw(st.sampled_from([" ", "\t", "  ", " \t "]))
    line = ws.join(p for p in (",".join(order), REF_LINE.split()[0], B64_BODY, comment.strip(" \t")) if p)
    return line, want


def check_valid_line(case: tuple[str, dict[str, object]]) -> None:
    line, want = case
    [entry] = parse_authorized_keys(line + "\n", source="src")
    assert entry.fingerprint == REF_FP
    assert entry.kind is (CredentialKind.CERT_AUTHORITY if want.get("ca") else CredentialKind.KEY)
    assert entry.scopes == want.get("scopes", ("relay:connect",))
    assert entry.options.from_networks == want.get("from")
    assert entry.options.no_port_forwarding is bool(want.get("npf"))
    assert entry.options.principals == want.get("principals")


# ------------------------------------------------------------------------------------------ tokens

token_texts = st.one_of(
    st.text(max_size=300),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ ",
        min_size=136,
        max_size=142,
    ),
    st.binary(min_size=100, max_size=108).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.tuples(st.integers(0, 138), st.characters(codec="utf-8")).map(
        lambda t: REF_TOKEN[: t[0]] + t[1] + REF_TOKEN[t[0] + 1 :]
    ),
)


def check_token(text: str) -> None:
    decoded = decode_token(text)
    if len(text) != 139:
        assert decoded is None
    if decoded is not None:
        key_id, ts, sig = decoded
        raw = key_id + ts.to_bytes(8, "big") + sig
        assert base64.urlsafe_b64encode(raw).decode().rstrip("=") == text
    verdict = verify_token(text, POLICY, now=REF_TS)
    assert isinstance(verdict, TokenVerdict)
    if decoded is None:
        assert verdict is TokenVerdict.MALFORMED
    if text != REF_TOKEN:
        assert verdict is not TokenVerdict.OK  # every change of a valid token is refused
    provider = ConfigIdentityProvider(AtomicRef(DynamicConfig(auth=POLICY)), now=lambda: REF_TS)
    ident = asyncio.run(provider.resolve_from_token(text))
    assert (ident is not None) == (verdict is TokenVerdict.OK)
    assert asyncio.run(provider.resolve_from_fingerprint(text)) is None


@st.composite
def minted(draw: st.DrawFn) -> tuple[int, int, float]:
    key_index = draw(st.integers(0, 3))
    ts = draw(st.integers(0, 2**64 - 1))
    now = draw(st.one_of(st.integers(0, 2**64), st.floats(allow_nan=False, allow_infinity=False)))
    return key_index, ts, now


def check_minted(case: tuple[int, int, float]) -> None:
    key_index, ts, now = case
    token = mint_token(KEYS[key_index], ts)
    assert len(token) == 139
    assert decode_token(token) is not None
    verdict = verify_token(token, POLICY, now=now, remote_ip=None)
    if key_index >= 1:
        assert verdict is TokenVerdict.UNKNOWN_KEY  # key 1 is a CA, keys 2-3 are not listed
    elif abs(now - ts) > 300:
        assert verdict is TokenVerdict.EXPIRED
    else:
        assert verdict is TokenVerdict.NOT_PERMITTED  # from="10.0.0.0/8" and no address


# ------------------------------------------------------------------------------------------ tests

PROPERTIES: dict[str, tuple[st.SearchStrategy[object], Callable[..., None]]] = {
    "parser-random": (texts, check_parser),
    "parser-valid-lines": (valid_lines(), check_valid_line),
    "token-decoder": (token_texts, check_token),
    "token-minted": (minted(), check_minted),
}


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_property(name: str) -> None:
    strategy, check = PROPERTIES[name]
    fuzz_settings()(given(strategy)(check))()


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_property_slow(name: str, request: pytest.FixtureRequest) -> None:
    require_slow(request)
    strategy, check = PROPERTIES[name]
    slow_fuzz_settings()(given(strategy)(check))()


def test_the_checks_catch_a_broken_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    here = sys.modules[__name__]

    def two_line_error(text: str, *, source: str) -> tuple[KeyEntry, ...]:
        raise AuthorizedKeysError([f"{source}:1: first\nsecond"])

    monkeypatch.setattr(here, "parse_authorized_keys", two_line_error)
    with pytest.raises(AssertionError):
        check_parser("x\n")
    monkeypatch.setattr(here, "verify_token", lambda *a, **k: TokenVerdict.OK)
    with pytest.raises(AssertionError):
        check_token("not a token")
