"""Proxy URL parsing (transport-and-ssh.md §10): strict one-line errors, credentials never shown."""

from __future__ import annotations

import inspect

import pytest

import alknet.core.proxy as proxy_pkg
from alknet.core.errors import ConfigError
from alknet.core.proxy import http_connect, socks5, url
from alknet.core.proxy.url import ProxyKind, ProxyURL, ProxyURLError, parse_proxy_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socks5://127.0.0.1:9050", ProxyURL(ProxyKind.SOCKS5, "127.0.0.1", 9050)),
        ("socks5h://proxy.example:1080", ProxyURL(ProxyKind.SOCKS5, "proxy.example", 1080)),
        ("SOCKS5://Proxy.Example:1080/", ProxyURL(ProxyKind.SOCKS5, "proxy.example", 1080)),
        ("http://127.0.0.1:3128", ProxyURL(ProxyKind.HTTP, "127.0.0.1", 3128)),
        ("http://[::1]:3128", ProxyURL(ProxyKind.HTTP, "::1", 3128)),
        ("socks5://[fd00:0::5]:1", ProxyURL(ProxyKind.SOCKS5, "fd00::5", 1)),
        (
            "socks5://user:s3cret@127.0.0.1:1080",
            ProxyURL(ProxyKind.SOCKS5, "127.0.0.1", 1080, "user", "s3cret"),
        ),
        ("http://us%3Aer:p%40ss@[::1]:8080", ProxyURL(ProxyKind.HTTP, "::1", 8080, "us:er", "p@ss")),
        ("http://user@proxy:8080", ProxyURL(ProxyKind.HTTP, "proxy", 8080, "user", "")),
        ("http://user:p@ss@proxy:8080", ProxyURL(ProxyKind.HTTP, "proxy", 8080, "user", "p@ss")),
    ],
)
def test_valid_urls(text: str, expected: ProxyURL) -> None:
    parsed = parse_proxy_url(text)
    assert parsed == expected
    assert (parsed.username, parsed.password) == (expected.username, expected.password)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://x:1", "unsupported proxy scheme 'https' (use socks5://, socks5h:// or http://)"),
        ("socks4://x:1", "unsupported proxy scheme 'socks4'"),
        ("ftp://u:s3cret@x:1", "unsupported proxy scheme 'ftp'"),
        ("127.0.0.1:1080", "invalid proxy URL: expected socks5://HOST:PORT"),
        ("socks5://127.0.0.1", "invalid proxy URL: missing port (expected socks5://HOST:PORT)"),
        ("http://[::1]", "invalid proxy URL: missing port"),
        ("socks5://127.0.0.1:", "invalid proxy URL: missing port"),
        ("socks5://127.0.0.1:0", "invalid proxy port '0' (expected 1-65535)"),
        ("socks5://127.0.0.1:70000", "invalid proxy port '70000'"),
        ("socks5://127.0.0.1:+80", "invalid proxy port '+80'"),
        ("socks5://127.0.0.1:8x", "invalid proxy port '8x'"),
        ("socks5://::1:1080", "invalid proxy URL: an IPv6 host must be written in brackets"),
        ("socks5://[::1:1080", "invalid proxy URL: unbalanced '[' in the host"),
        ("socks5://[zz]:1080", "invalid proxy URL: the bracketed host is not an IPv6 address"),
        ("socks5://[fe80::1%eth0]:1080", "invalid proxy URL: IPv6 zone ids are not supported"),
        ("socks5://[::1]x:1080", "invalid proxy URL: unexpected text after the IPv6 host"),
        ("socks5://:1080", "invalid proxy URL: missing host"),
        ("http://pro_xy!:80", "invalid proxy URL: the host is not a valid name or address"),
        ("http://proxy:80/path", "invalid proxy URL: a path, query or fragment is not allowed"),
        ("http://proxy:80?x=1", "a path, query or fragment is not allowed"),
        ("http://proxy:80#f", "a path, query or fragment is not allowed"),
        ("http://pro xy:80", "invalid proxy URL: whitespace or control characters"),
        ("http://proxy:80\n", "whitespace or control characters"),
        ("socks5://:s3cret@proxy:1", "invalid proxy URL: empty user name before '@'"),
        ("socks5://user@proxy:1", "SOCKS5 user name and password must be 1-255 bytes each"),
        ("socks5://user:" + "p" * 256 + "@proxy:1", "SOCKS5 user name and password must be 1-255 bytes each"),
        ("http://u:%ff@proxy:1", "the credentials are not valid percent-encoded UTF-8"),
    ],
)
def test_invalid_urls(text: str, message: str) -> None:
    with pytest.raises(ProxyURLError) as info:
        parse_proxy_url(text)
    text_of_error = str(info.value)
    assert message in text_of_error
    assert "\n" not in text_of_error
    assert "s3cret" not in text_of_error
    assert isinstance(info.value, ConfigError)


def test_credentials_never_shown() -> None:
    parsed = parse_proxy_url("socks5://alice:s3cret@127.0.0.1:1080")
    assert parsed.describe() == "socks5://***@127.0.0.1:1080"
    assert str(parsed) == parsed.describe()
    assert "s3cret" not in repr(parsed) and "alice" not in repr(parsed)
    assert parse_proxy_url("http://[::1]:3128").describe() == "http://[::1]:3128"


def test_ambient_proxy_variables_are_never_read() -> None:
    for module in (proxy_pkg, url, socks5, http_connect):
        source = inspect.getsource(module)
        assert "environ" not in source
        assert "getproxies" not in source
        assert "getenv" not in source
