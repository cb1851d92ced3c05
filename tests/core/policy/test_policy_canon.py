"""``canonicalise_host`` and ``canonicalise_unix_path`` (auth-and-config.md §7.4)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from alknet.core.policy.canon import (
    INVALID_REASONS,
    Canonical,
    Invalid,
    canonicalise_host,
    canonicalise_unix_path,
)


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        ("bücher.example", "name", "xn--bcher-kva.example"),
        ("127.0.0.1.", "ip", IPv4Address("127.0.0.1")),
        ("127.0.0.1", "ip", IPv4Address("127.0.0.1")),
        ("DB.Internal.", "name", "db.internal"),
        ("LOCALHOST.", "name", "localhost"),
        ("ｌｏｃａｌｈｏｓｔ", "name", "localhost"),  # fullwidth
        ("１２７．０．０．１", "ip", IPv4Address("127.0.0.1")),  # fullwidth digits and dots
        ("::ffff:127.0.0.1", "ip", IPv4Address("127.0.0.1")),
        ("[::ffff:10.1.2.3]", "ip", IPv4Address("10.1.2.3")),
        ("[fd00::5]", "ip", IPv6Address("fd00::5")),
        ("FD00::5", "ip", IPv6Address("fd00::5")),
        ("::1", "ip", IPv6Address("::1")),
        ("alknet-control", "reserved", "alknet-control"),
        ("alknet-nope", "reserved", "alknet-nope"),
        ("under_score.example", "name", "under_score.example"),
        ("1.2.3.4.example", "name", "1.2.3.4.example"),
        ("xn--bcher-kva.example", "name", "xn--bcher-kva.example"),
        ("a" * 63 + ".example", "name", "a" * 63 + ".example"),
    ],
)
def test_canonical(raw: str, kind: str, value: object) -> None:
    assert canonicalise_host(raw) == Canonical(kind, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a..b",
        "ex ample",
        "a/b",
        "x" * 300,
        "a" * 254,
        "127.1",
        "0x7f.0.0.1",
        "0x0a.1.2.3",
        "2130706433",
        "0177.0.0.1",
        "1.2.3.0x",
        "0.0.0.0",
        "::",
        "[::]",
        "::ffff:0.0.0.0",
        "fe80::1%eth0",
        "[fe80::1%eth0]",
        "Alknet-control",
        "ALKNET-control",
        "ａｌｋｎｅｔ-control",  # a fullwidth look-alike of the reserved prefix
        "user@host",
        "back\\slash",
        "tab\there",
        "nl\nhere",
        "zero\u200bwidth",
        "[10.0.0.1]",
        "[example.com]",
        "[::1",
        "::1]",
        "host:80",
        "a" * 64 + ".example",
        "-" * 300,
        ".",
        "..",
        "example..",
        "exa*mple.com",
        "\u00ad",
    ],
)
def test_invalid(raw: str) -> None:
    result = canonicalise_host(raw)
    assert isinstance(result, Invalid), result
    assert result.reason in INVALID_REASONS
    if len(raw) >= 4:
        assert raw not in result.reason


def test_trailing_dot_strips_only_one() -> None:
    assert canonicalise_host("example.com.") == Canonical("name", "example.com")
    assert isinstance(canonicalise_host("example.com.."), Invalid)


def test_max_length_name() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert len(name) == 253
    assert canonicalise_host(name) == Canonical("name", name)
    assert isinstance(canonicalise_host(name + "b"), Invalid)


def test_canonical_is_idempotent() -> None:
    for raw in ["bücher.example", "ｌｏｃａｌｈｏｓｔ", "::ffff:10.0.0.1", "[fd00::5]", "alknet-control"]:
        first = canonicalise_host(raw)
        assert isinstance(first, Canonical)
        assert canonicalise_host(str(first.value)) == first


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("/run/x.sock", "/run/x.sock"),
        ("/run//app/./api.sock", "/run/app/api.sock"),
        ("//run///x", "/run/x"),
        ("/run/app/", "/run/app"),
        ("/./x", "/x"),
        ("/", "/"),
        ("/" + "a" * 106, "/" + "a" * 106),  # 107 bytes
        ("/ü" * 35, "/ü" * 35),  # 105 bytes
    ],
)
def test_unix_path(raw: str, value: str) -> None:
    assert canonicalise_unix_path(raw) == Canonical("unix", value)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "relative/x.sock",
        "x.sock",
        "/run/app/../docker.sock",
        "/..",
        "/run/..",
        "/a\x00b",
        "/" + "a" * 107,  # 108 bytes
        "/ü" * 36,  # 108 bytes
        "/" + "a" * 5000,
        "/bad\udfff",
    ],
)
def test_unix_path_invalid(raw: str) -> None:
    result = canonicalise_unix_path(raw)
    assert isinstance(result, Invalid)
    assert result.reason in INVALID_REASONS


def test_dotdot_inside_a_name_is_fine() -> None:
    assert canonicalise_unix_path("/run/a..b/x") == Canonical("unix", "/run/a..b/x")
