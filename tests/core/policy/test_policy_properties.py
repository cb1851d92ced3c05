"""Property tests for the rule grammar and canonicalisation: no crash, no hang, and either a value or a clear
``ValueError`` / ``Invalid``. 500 examples each by default; the ``slow`` variants run 20 000 (``-m slow``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alknet.core.policy.canon import (
    BIND_ALL,
    BIND_LOCALHOST,
    INVALID_REASONS,
    MAX_HOST_LENGTH,
    Canonical,
    Invalid,
    canonical_bind_host,
    canonicalise_host,
    canonicalise_unix_path,
)
from alknet.core.policy.forwarding import Request, Target, TargetKind, parse_ports, parse_target

FAST = settings(
    max_examples=500,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW = settings(
    max_examples=20_000,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text biased towards the interesting characters of hosts and targets.
_TOKENS = [
    *"abcxyzAZ0123456789.-_:*/[]%@\\ ",
    *("ｌ", "１", "．", "。", "ü", "ß", "\u200b", "\x00", "\n"),
    *("alknet-", "0x", "::ffff:", "unix:", "xn--", ".."),
]
_HOSTY = st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join)
_ANY_TEXT = st.one_of(st.text(max_size=300), _HOSTY)


def _check_canonical(s: str) -> None:
    result = canonicalise_host(s)
    if isinstance(result, Invalid):
        assert result.reason in INVALID_REASONS
        return
    assert isinstance(result, Canonical)
    if result.kind == "reserved":
        assert s == result.value and s.startswith("alknet-")
        return
    if result.kind == "ip":
        assert isinstance(result.value, IPv4Address | IPv6Address)
        assert not result.value.is_unspecified
        assert not (isinstance(result.value, IPv6Address) and result.value.ipv4_mapped is not None)
    else:
        name = result.value
        assert isinstance(name, str) and name.isascii() and name == name.lower()
        assert len(name) <= MAX_HOST_LENGTH and not name.endswith(".")
    # canonical output is a fixed point
    assert canonicalise_host(str(result.value)) == result


def _check_target(text: str) -> None:
    for listen in (False, True):
        try:
            target = parse_target(text, listen=listen)
        except ValueError as exc:
            assert str(exc), "ValueError without a message"
            continue
        assert isinstance(target, Target)
        assert parse_target(target.text, listen=listen) == target  # canonical text round-trips
        if target.ports is not None:
            lo, hi = target.ports
            assert 0 <= lo <= hi <= 65535


def _check_unix(path: str) -> None:
    result = canonicalise_unix_path(path)
    if isinstance(result, Invalid):
        assert result.reason in INVALID_REASONS
        return
    value = str(result.value)
    assert value.startswith("/") and "//" not in value and "/./" not in value
    assert ".." not in value.split("/")
    assert len(value.encode("utf-8", "surrogateescape")) <= 107
    assert canonicalise_unix_path(value) == result


def _check_bind_host(host: str) -> None:
    result = canonical_bind_host(host)
    if isinstance(result, Invalid):
        assert result.reason in INVALID_REASONS
    else:
        assert result in (BIND_ALL, BIND_LOCALHOST) or isinstance(result, IPv4Address | IPv6Address)


def _check_request(host: str, port: int | None) -> None:
    result = Request(host, port).canonical()
    assert isinstance(result, Canonical | Invalid)


_PROPERTIES: dict[str, tuple[Callable[..., None], st.SearchStrategy[tuple[object, ...]]]] = {
    "canonical_bind_host": (_check_bind_host, st.tuples(_ANY_TEXT)),
    "canonicalise_host": (_check_canonical, st.tuples(_ANY_TEXT)),
    "parse_target": (_check_target, st.tuples(_ANY_TEXT)),
    "canonicalise_unix_path": (
        _check_unix,
        st.tuples(st.one_of(st.text(max_size=200), _HOSTY.map(lambda s: "/" + s))),
    ),
    "request": (_check_request, st.tuples(_ANY_TEXT, st.one_of(st.none(), st.integers(-5, 70000)))),
}


@pytest.mark.parametrize("name", sorted(_PROPERTIES))
def test_never_crashes(name: str) -> None:
    check, args = _PROPERTIES[name]
    FAST(given(args)(lambda a: check(*a)))()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(_PROPERTIES))
def test_never_crashes_slow(name: str) -> None:
    check, args = _PROPERTIES[name]
    SLOW(given(args)(lambda a: check(*a)))()


# --- grammar-generated valid targets ------------------------------------------------------------------------

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_LABEL = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_LOWER),
    st.text(alphabet=_LOWER + "0123456789-", max_size=10),
    st.sampled_from(_LOWER),
)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join).filter(lambda n: not n.startswith("alknet-"))


@st.composite
def _ports(draw: st.DrawFn) -> tuple[str, tuple[int, int] | None]:
    kind = draw(st.sampled_from(["star", "one", "range"]))
    if kind == "star":
        return "*", None
    lo = draw(st.integers(0, 65535))
    if kind == "one":
        return str(lo), (lo, lo)
    hi = draw(st.integers(lo, 65535))
    return f"{lo}-{hi}", (lo, hi)


@st.composite
def _valid_target(draw: st.DrawFn) -> tuple[str, TargetKind, tuple[int, int] | None]:
    port_text, ports = draw(_ports())
    kind = draw(st.sampled_from(list(TargetKind)))
    if kind is TargetKind.ANY:
        return f"*:{port_text}", kind, ports
    if kind is TargetKind.RESERVED_ANY:
        return "alknet-*", kind, None
    if kind is TargetKind.RESERVED_NAME:
        return f"alknet-control:{port_text}", kind, ports
    if kind is TargetKind.HOST:
        return f"{draw(_NAME)}:{port_text}", kind, ports
    if kind is TargetKind.GLOB:
        return f"*.{draw(_NAME)}:{port_text}", kind, ports
    if kind is TargetKind.ADDRESS:
        ip = draw(
            st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(lambda a: not a.is_unspecified)
        )
        if isinstance(ip, IPv6Address):
            if ip.ipv4_mapped is not None or ip.scope_id is not None:
                ip = IPv6Address("fd00::1")
            return f"[{ip}]:{port_text}", kind, ports
        return f"{ip}:{port_text}", kind, ports
    if kind is TargetKind.NETWORK:
        v6 = draw(st.booleans())
        if v6:
            net6 = IPv6Network(f"2001:db8::/{draw(st.integers(32, 128))}", strict=False)
            return f"[{net6}]:{port_text}", kind, ports
        net4 = IPv4Network(f"{draw(st.ip_addresses(v=4))}/{draw(st.integers(0, 32))}", strict=False)
        return f"{net4}:{port_text}", kind, ports
    path = "/" + "/".join(
        draw(st.lists(st.text(alphabet=_LOWER[:6] + "*._-", min_size=1, max_size=8), max_size=5))
    )
    return f"unix:{path}", kind, None


@FAST
@given(_valid_target())
def test_generated_targets_parse(case: tuple[str, TargetKind, tuple[int, int] | None]) -> None:
    text, kind, ports = case
    if kind is TargetKind.UNIX and (
        ".." in text.split("/") or any(s in ("", ".") for s in text[6:].split("/")[1:])
    ):
        return  # collapsed or refused segments are covered by the canonicalisation tests
    target = parse_target(text)
    assert target.kind is kind
    assert target.ports == ports
    assert parse_target(target.text) == target


@FAST
@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_ranges(a: int, b: int) -> None:
    if a <= b:
        assert parse_ports(f"{a}-{b}") == (a, b)
    else:
        with pytest.raises(ValueError):
            parse_ports(f"{a}-{b}")
    assert parse_ports(str(a)) == (a, a)
    with pytest.raises(ValueError):
        parse_ports(f"0{a}")
    with pytest.raises(ValueError):
        parse_ports(str(a + 65536))
