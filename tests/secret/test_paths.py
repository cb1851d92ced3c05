"""Path syntax, the path table and the per-operation subtrees (secret.md §3)."""

from __future__ import annotations

import pytest

from alknet.secret import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    SSH_HOST_PATH,
    InvalidPathError,
    device_path,
    encryption_path,
    format_path,
    parse_path,
    site_password_index,
    site_password_path,
)
from alknet.secret.paths import (
    HARDENED,
    check_ed25519_path,
    check_encryption_path,
    check_ethereum_path,
    check_password_path,
)

H = HARDENED


def test_h_and_quote_are_equivalent_and_canonical() -> None:
    assert parse_path("m/74h/0h/0h/0h") == parse_path("m/74'/0'/0'/0'") == (74 + H, H, H, H)
    assert format_path(parse_path("m/74h/0h/0h/0h")) == "m/74'/0'/0'/0'"


def test_parse_examples() -> None:
    assert parse_path("m") == ()
    assert parse_path("m/0") == (0,)
    assert parse_path("m/2147483647'") == (2147483647 + H,)
    assert parse_path(ETHEREUM_PATH) == (44 + H, 60 + H, H, 0, 0)
    assert parse_path("m/" + "/".join(["1'"] * 16)) == (1 + H,) * 16


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "74'/0'",
        "m/",
        "m//1'",
        "m/01'",
        "m/2147483648'",
        "m/2147483648",
        "m/1H",
        "m/ 1'",
        "m/1' ",
        "m/1'\n",
        "m/-1'",
        "m/+1",
        "m/1''",
        "m/1'h",
        "m/h",
        "m/'",
        "M/1'",
        "m1'",
        "m/1/",
        "m/\u0661",  # ARABIC-INDIC DIGIT ONE is not an ASCII digit
        "m/99999999999999999999999",
        "m/" + "/".join(["1'"] * 17),
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(InvalidPathError):
        parse_path(bad)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidPathError):
        parse_path(None)  # type: ignore[arg-type]


def test_errors_name_positions_not_text() -> None:
    with pytest.raises(InvalidPathError) as info:
        parse_path("m/74'/secretword'")
    assert "component 2" in str(info.value)
    assert "secretword" not in str(info.value)


def test_format_path_rejects_bad_indices() -> None:
    with pytest.raises(ValueError):
        format_path([2**32])
    with pytest.raises(ValueError):
        format_path([-1])
    with pytest.raises(ValueError):
        format_path([True])
    with pytest.raises(ValueError):
        format_path([0] * 17)


def test_table_constants() -> None:
    assert IDENTITY_PATH == "m/74'/0'/0'/0'"
    assert SSH_HOST_PATH == "m/74'/0'/1'/0'"
    assert ETHEREUM_PATH == "m/44'/60'/0'/0/0"


def test_device_path() -> None:
    assert device_path(1) == "m/74'/0'/0'/1'"
    assert device_path(2**31 - 1) == "m/74'/0'/0'/2147483647'"
    for bad in (0, -1, 2**31, True, "1"):
        with pytest.raises(ValueError):
            device_path(bad)  # type: ignore[arg-type]


def test_encryption_path() -> None:
    assert encryption_path(2) == "m/74'/2'/0'/0'"
    assert encryption_path(3) == "m/74'/2'/0'/1'"
    assert encryption_path(2**31 + 1) == "m/74'/2'/0'/2147483647'"
    for bad in (1, 0, -2, 2**31 + 2, True, 2.0):
        with pytest.raises(ValueError):
            encryption_path(bad)  # type: ignore[arg-type]


def test_site_password_index() -> None:
    assert site_password_index("example.com") == 595175158
    assert site_password_index("github.com") == 988479524
    assert site_password_index("Example.com") != site_password_index("example.com")
    assert site_password_path("github.com") == "m/74'/1'/0'/988479524'"
    assert 0 <= site_password_index("x" * 1024) < 2**31
    for bad in ("", "x" * 1025, "\ud800", None):
        with pytest.raises(ValueError):
            site_password_index(bad)  # type: ignore[arg-type]


def test_ed25519_subtree() -> None:
    assert check_ed25519_path("m/74h/0h/0h/0h") == IDENTITY_PATH
    assert check_ed25519_path("m/74'/0'/5'/6'/7'") == "m/74'/0'/5'/6'/7'"
    with pytest.raises(InvalidPathError, match="hardened only"):
        check_ed25519_path("m/74'/0'/0'/0")
    for bad in ("m/44'/501'/0'/0'", "m/74'/0'/0'", "m/74'/1'/0'/0'", "m"):
        with pytest.raises(InvalidPathError):
            check_ed25519_path(bad)


def test_password_and_encryption_subtrees() -> None:
    assert check_password_path("m/74'/1'/0'/0'") == "m/74'/1'/0'/0'"
    assert check_encryption_path("m/74h/2h/0h/7h") == "m/74'/2'/0'/7'"
    for bad in ("m/74'/0'/0'/0'", "m/74'/1'/0'/0", "m/74'/1'/1'/0'", "m/74'/1'/0'/0'/0'", "m/74'/2'/0'/0'"):
        with pytest.raises(InvalidPathError):
            check_password_path(bad)
    for bad in ("m/74'/1'/0'/0'", "m/74'/2'/0'/0", "m/74'/2'/0'"):
        with pytest.raises(InvalidPathError):
            check_encryption_path(bad)


def test_ethereum_subtree() -> None:
    assert check_ethereum_path("m/44h/60h/3h/1/9") == "m/44'/60'/3'/1/9"
    for bad in (
        "m/44'/60'/0/0/0",
        "m/44'/60'/0'/2/0",
        "m/44'/60'/0'/0'/0",
        "m/44'/60'/0'/0/0'",
        "m/44'/61'/0'/0/0",
    ):
        with pytest.raises(InvalidPathError):
            check_ethereum_path(bad)
