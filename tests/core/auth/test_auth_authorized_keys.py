"""auth-and-config.md §3: the authorized_keys parser, every option, every error rule, exact messages."""

from __future__ import annotations

import base64
import struct
from ipaddress import ip_network

import pytest
from auth_helpers import REF_FP, REF_LINE, line_of, new_key, new_line, ref_key

from alknet.core.auth.authorized_keys import (
    DEFAULT_SCOPES,
    AuthorizedKeysError,
    KeyEntry,
    parse_authorized_keys,
)
from alknet.core.auth.identity import CredentialKind, KeyOptions
from alknet.core.auth.keys import public_key_of
from alknet.core.errors import ConfigError
from alknet.core.policy.forwarding import parse_target

RSA_LINE = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 rsa@host"  # the type decides before the data is looked at
)


def errors_of(text: str, *, source: str = "ak", implicit_ca: bool = False) -> list[str]:
    with pytest.raises(AuthorizedKeysError) as exc:
        parse_authorized_keys(text, source=source, implicit_ca=implicit_ca)
    return exc.value.errors


def one(text: str, **kw: bool) -> KeyEntry:
    entries = parse_authorized_keys(text, source="ak", **kw)
    assert len(entries) == 1
    return entries[0]


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


# ------------------------------------------------------------------------------------------ acceptance


def test_restrict_from_and_scopes() -> None:
    e = one(f'restrict,from="10.0.0.0/8",alknet-scopes="node:w1,relay:connect" {REF_LINE} w1')
    assert e.kind is CredentialKind.KEY
    assert e.scopes == ("node:w1", "relay:connect")
    assert e.options == KeyOptions(from_networks=(ip_network("10.0.0.0/8"),), no_port_forwarding=True)
    assert e.fingerprint == REF_FP
    assert e.raw_key == public_key_of(ref_key()).raw
    assert e.comment == "w1"
    assert e.line_no == 1


def test_cert_authority_with_principals() -> None:
    e = one(f'cert-authority,principals="deploy" {REF_LINE} ca')
    assert e.kind is CredentialKind.CERT_AUTHORITY
    assert e.options.principals == frozenset({"deploy"})
    assert e.scopes == DEFAULT_SCOPES == ("relay:connect",)


def test_principals_without_cert_authority() -> None:
    assert errors_of(f'principals="deploy" {REF_LINE}') == ["ak:1: principals= requires cert-authority"]


def test_permitopen_parses_with_the_rule_target_grammar() -> None:
    e = one(f'permitopen="db:5432,[fd00::1]:22" {REF_LINE}')
    assert e.options.permitopen == (parse_target("db:5432"), parse_target("[fd00::1]:22"))
    assert e.options.no_port_forwarding is False


def test_from_with_a_hostname_names_the_line() -> None:
    text = f"{new_line()}\n" + f'from="bad.example" {REF_LINE}\n'
    assert errors_of(text) == ['ak:2: from= entry "bad.example" is not an IP address or CIDR']


def test_command_is_an_unknown_option() -> None:
    assert errors_of(f'# header\n\ncommand="x" {REF_LINE}') == ['ak:3: unknown option "command"']


def test_no_pty_on_line_7_of_10_refuses_the_whole_file() -> None:
    lines = [new_line(comment=f"k{i}") for i in range(10)]
    lines[6] = "no-pty " + lines[6]
    with pytest.raises(AuthorizedKeysError) as exc:
        parse_authorized_keys("\n".join(lines) + "\n", source="/etc/alknet/authorized_keys")
    assert exc.value.errors == ['/etc/alknet/authorized_keys:7: unknown option "no-pty"']
    assert str(exc.value) == '/etc/alknet/authorized_keys:7: unknown option "no-pty"'


def test_quoted_commas_never_split_options() -> None:
    e = one(f'alknet-scopes="a,b",restrict {REF_LINE}')
    assert e.scopes == ("a", "b")
    assert e.options.no_port_forwarding is True
    e = one(f'from="10.0.0.0/8,192.168.1.1",alknet-scopes="x,y,z" {REF_LINE}')
    assert e.options.from_networks == (ip_network("10.0.0.0/8"), ip_network("192.168.1.1/32"))
    assert e.scopes == ("x", "y", "z")


def test_rsa_line_is_refused_with_its_type() -> None:
    assert errors_of(RSA_LINE) == ["ak:1: unsupported key type ssh-rsa (only ssh-ed25519 is accepted)"]
    assert errors_of(f"restrict {RSA_LINE}") == [
        "ak:1: unsupported key type ssh-rsa (only ssh-ed25519 is accepted)"
    ]


def test_corrupted_base64_and_wrong_embedded_type() -> None:
    b64 = REF_LINE.split()[1]
    assert errors_of(f"ssh-ed25519 {b64[:-2]}") == ["ak:1: invalid base64 key data"]
    assert errors_of(f"ssh-ed25519 {b64[:20]}!{b64[21:]}") == ["ak:1: invalid base64 key data"]
    rsa_blob = _ssh_string(b"ssh-rsa") + _ssh_string(b"\x01\x00\x01") + _ssh_string(b"\x00" * 65)
    text = f"ssh-ed25519 {base64.b64encode(rsa_blob).decode()}"
    assert errors_of(text) == ["ak:1: key data is of type ssh-rsa, not ssh-ed25519"]


# ------------------------------------------------------------------------------------------ grammar


def test_blank_lines_comments_and_line_numbers() -> None:
    k1, k2 = new_key(), new_key()
    text = f"\n# comment\n   # indented comment\n\t\n{line_of(k1, comment='a')}\r\n\n  {line_of(k2)}  \n"
    entries = parse_authorized_keys(text, source="ak")
    assert [e.line_no for e in entries] == [5, 7]
    assert [e.fingerprint for e in entries] == [public_key_of(k1).fingerprint, public_key_of(k2).fingerprint]
    assert entries[0].comment == "a"
    assert entries[1].comment == ""
    assert parse_authorized_keys("", source="ak") == ()
    assert parse_authorized_keys("# only a comment\n", source="ak") == ()


def test_option_names_are_case_insensitive() -> None:
    e = one(f'RESTRICT,Alknet-Scopes="s",FROM="::1" {REF_LINE}')
    assert e.options.no_port_forwarding
    assert e.scopes == ("s",)
    assert e.options.from_networks == (ip_network("::1/128"),)
    assert one(f"Cert-Authority {REF_LINE}").kind is CredentialKind.CERT_AUTHORITY


def test_escaped_quote_and_spaces_inside_values() -> None:
    # a principal with a space is refused; an escaped quote inside a value is a literal quote
    assert errors_of(f'cert-authority,principals="ops team" {REF_LINE}') == [
        'ak:1: principals= entry "ops team" is not a valid user name'
    ]
    e = one(f'cert-authority,principals="de\\"ploy,ops" {REF_LINE}')
    assert e.options.principals == frozenset({'de"ploy', "ops"})


def test_multiple_spaces_and_tabs_between_fields() -> None:
    e = one(f"restrict \t ssh-ed25519\t {REF_LINE.split()[1]}   a  comment ")
    assert e.comment == "a  comment"
    assert e.options.no_port_forwarding


def test_empty_scopes_and_default_scopes() -> None:
    assert one(f'alknet-scopes="" {REF_LINE}').scopes == ()
    assert one(REF_LINE).scopes == ("relay:connect",)
    assert one(f'alknet-scopes="b,a,b,/dev1/*,*" {REF_LINE}').scopes == ("*", "/dev1/*", "a", "b")


def test_no_port_forwarding_and_restrict_are_the_same_restriction() -> None:
    assert one(f"no-port-forwarding {REF_LINE}").options == KeyOptions(no_port_forwarding=True)
    assert one(f"restrict {REF_LINE}").options == KeyOptions(no_port_forwarding=True)
    assert one(f"restrict,no-port-forwarding {REF_LINE}").options == KeyOptions(no_port_forwarding=True)


def test_permitopen_is_repeatable_and_accumulates() -> None:
    e = one(f'permitopen="a:1",permitopen="b:2,c:3" {REF_LINE}')
    assert e.options.permitopen == tuple(parse_target(t) for t in ("a:1", "b:2", "c:3"))


def test_implicit_ca_file() -> None:
    k1, k2 = new_key(), new_key()
    text = f'principals="deploy,ops" {line_of(k1)}\ncert-authority {line_of(k2)}\n'
    entries = parse_authorized_keys(text, source="ca.pub", implicit_ca=True)
    assert [e.kind for e in entries] == [CredentialKind.CERT_AUTHORITY] * 2
    assert entries[0].options.principals == frozenset({"deploy", "ops"})


def test_from_accepts_ipv6_and_single_addresses() -> None:
    e = one(f'from="2001:db8::/32,127.0.0.1,fd00::7" {REF_LINE}')
    assert e.options.from_networks == (
        ip_network("2001:db8::/32"),
        ip_network("127.0.0.1/32"),
        ip_network("fd00::7/128"),
    )


# ------------------------------------------------------------------------------------------ error rules


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"no-pty {REF_LINE}", 'unknown option "no-pty"'),
        (f'expiry-time="20300101" {REF_LINE}', 'unknown option "expiry-time"'),
        (f'permitlisten="8080" {REF_LINE}', 'unknown option "permitlisten"'),
        (f'Command="x" {REF_LINE}', 'unknown option "command"'),
        (f'from="10.0.0.0/8",from="10.0.0.0/8" {REF_LINE}', 'option "from" is repeated'),
        (f"restrict,RESTRICT {REF_LINE}", 'option "restrict" is repeated'),
        (f'alknet-scopes="a",alknet-scopes="b" {REF_LINE}', 'option "alknet-scopes" is repeated'),
        (f'from="10.0.0.*" {REF_LINE}', 'from= entry "10.0.0.*" is not an IP address or CIDR'),
        (f'from="*.example.com" {REF_LINE}', 'from= entry "*.example.com" is not an IP address or CIDR'),
        (f'from="10.0.0.1/8" {REF_LINE}', 'from= entry "10.0.0.1/8" is not an IP address or CIDR'),
        (f'from="!10.0.0.1" {REF_LINE}', 'from= entry "!10.0.0.1" is not an IP address or CIDR'),
        (
            f'from="10.0.0.0/8, 10.1.0.0/16" {REF_LINE}',
            'from= entry " 10.1.0.0/16" is not an IP address or CIDR',
        ),
        (f'from="" {REF_LINE}', "from= has an empty entry"),
        (f'from="10.0.0.1,,10.0.0.2" {REF_LINE}', "from= has an empty entry"),
        (f"from=10.0.0.1 {REF_LINE}", 'option "from": the value must be in double quotes'),
        (f'from="10.0.0.1 {REF_LINE}', 'option "from": unterminated quote'),
        (f'alknet-scopes="a\\" {REF_LINE}', 'option "alknet-scopes": unterminated quote'),
        (f'restrict="yes" {REF_LINE}', 'option "restrict" takes no value'),
        (f'cert-authority="" {REF_LINE}', 'option "cert-authority" takes no value'),
        (f"from {REF_LINE}", 'option "from" needs a quoted value (from="...")'),
        (f'alknet-scopes="bad scope" {REF_LINE}', 'alknet-scopes= has an invalid scope "bad scope"'),
        (f'alknet-scopes="a,,b" {REF_LINE}', 'alknet-scopes= has an invalid scope ""'),
        (f'alknet-scopes=":x" {REF_LINE}', 'alknet-scopes= has an invalid scope ":x"'),
        (f'cert-authority,principals="" {REF_LINE}', 'principals= entry "" is not a valid user name'),
        (f'permitopen="db:99999" {REF_LINE}', "permitopen= entry 1: port out of range 0..65535"),
        (f'permitopen="a:1," {REF_LINE}', "permitopen= entry 2 is empty"),
        ("restrict", "missing key after the options"),
        ('restrict,from="10.0.0.0/8"', "missing key after the options"),
        ('restrict,,from="10.0.0.0/8" x', "malformed options at column 10"),
        ('restrict,"x" x', "malformed options at column 10"),
        (f'from="10.0.0.1"x {REF_LINE}', "malformed options at column 16"),
        ("ssh-ed25519", "missing base64 key data"),
        ("restrict ssh-ed25519", "missing base64 key data"),
        ("restrict foo AAAA", 'unknown key type "foo"'),
        (
            "ecdsa-sha2-nistp256 AAAA",
            "unsupported key type ecdsa-sha2-nistp256 (only ssh-ed25519 is accepted)",
        ),
        (
            "sk-ssh-ed25519@openssh.com AAAA",
            "unsupported key type sk-ssh-ed25519@openssh.com (only ssh-ed25519 is accepted)",
        ),
        (
            "ssh-ed25519-cert-v01@openssh.com AAAA",
            "certificate key type ssh-ed25519-cert-v01@openssh.com is not allowed here",
        ),
        (
            "ssh-rsa-cert-v01@openssh.com AAAA",
            "certificate key type ssh-rsa-cert-v01@openssh.com is not allowed here",
        ),
        (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAHwOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTE=",
            "malformed ssh-ed25519 key data",
        ),
    ],
)
def test_error_messages(line: str, message: str) -> None:
    assert errors_of(f"{new_line()}\n{line}\n") == [f"ak:2: {message}"]


def test_short_and_long_key_data() -> None:
    raw = public_key_of(ref_key()).raw
    for blob in (
        _ssh_string(b"ssh-ed25519") + _ssh_string(raw[:31]),
        _ssh_string(b"ssh-ed25519") + _ssh_string(raw) + b"\x00",
        _ssh_string(b"ssh-ed25519") + _ssh_string(raw + b"\x00"),
        _ssh_string(b"ssh-ed25519"),
    ):
        text = f"ssh-ed25519 {base64.b64encode(blob).decode()}"
        assert errors_of(text) == ["ak:1: malformed ssh-ed25519 key data"]


def test_duplicate_fingerprint_is_an_error() -> None:
    text = f"{REF_LINE} a\n{new_line()}\nrestrict {REF_LINE} b\n"
    assert errors_of(text) == [f"ak:3: duplicate key {REF_FP} (also on line 1)"]
    # also between a plain key and a CA line
    text = f"{REF_LINE}\ncert-authority {REF_LINE}\n"
    assert errors_of(text) == [f"ak:2: duplicate key {REF_FP} (also on line 1)"]


def test_every_bad_line_is_listed_in_order() -> None:
    text = "\n".join(
        [
            new_line(),
            f'principals="deploy" {new_line()}',
            new_line(),
            f'command="x" {new_line()}',
            RSA_LINE,
            "# fine",
            f'from="bad.example" {new_line()}',
        ]
    )
    with pytest.raises(AuthorizedKeysError) as exc:
        parse_authorized_keys(text, source="keys")
    assert exc.value.errors == [
        "keys:2: principals= requires cert-authority",
        'keys:4: unknown option "command"',
        "keys:5: unsupported key type ssh-rsa (only ssh-ed25519 is accepted)",
        'keys:7: from= entry "bad.example" is not an IP address or CIDR',
    ]
    assert str(exc.value) == "keys:2: principals= requires cert-authority (and 3 more)"
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, ValueError)


def test_values_in_messages_are_escaped_and_cut() -> None:
    [err] = errors_of(f'from="\x1b[31m{"x" * 100}" {REF_LINE}')
    assert err == 'ak:1: from= entry "\\x1b[31m' + "x" * 59 + '..." is not an IP address or CIDR'
    [err] = errors_of(f'alknet-scopes="a\\"b" {REF_LINE}')
    assert err == 'ak:1: alknet-scopes= has an invalid scope "a\\"b"'
    [err] = errors_of(f'from="\u2028" {REF_LINE}')
    assert err == 'ak:1: from= entry "\\u2028" is not an IP address or CIDR'
    assert len(err.splitlines()) == 1


def test_other_line_breaks_do_not_shift_line_numbers() -> None:
    # only LF ends a line; a form feed or U+2028 inside a line is part of that line (and makes it invalid)
    text = f"{new_line()}\n{REF_LINE} \x0c comment\u2028more\n{new_line()}\n"
    entries = parse_authorized_keys(text, source="ak")
    assert [e.line_no for e in entries] == [1, 2, 3]
    assert entries[1].comment == "\x0c comment\u2028more"


def test_repr_of_entries_shows_no_key_material() -> None:
    e = one(f'alknet-scopes="a,b" {REF_LINE} c')
    text = repr(e)
    assert text == f"KeyEntry(key {REF_FP} line=1 scopes=2)"
    assert REF_LINE.split()[1] not in text
    assert e.raw_key.hex() not in text


def test_entries_are_immutable_and_carry_token_key_id() -> None:
    e = one(REF_LINE)
    assert e.token_key_id.hex() == "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
    with pytest.raises(AttributeError):
        e.scopes = ()  # type: ignore[misc]
