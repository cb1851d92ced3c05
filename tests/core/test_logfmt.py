"""logfmt lines, escaping, logging setup, redaction and the asyncssh cap (auth-and-config.md §6.2, §9)."""

from __future__ import annotations

import io
import ipaddress
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alknet.core import logfmt
from alknet.core.errors import ConfigError

FP = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
TS = 1700000000.123  # 2023-11-14T22:13:20.123Z
TOKEN = (
    "Vkdap1RjR0wChd9dvyvKtz2mUTWIOem3dIGy6rEHcIwAAAAAZVPxAAHQqPbo0lcpPt9tPTVOmpHbY7ssx_ICqH6olz6MqagZT2Yv4hURcIU"
    "XGWsssvxqIrfOgGSOMNUBDrALIxCtMQs"
)
API_KEY = "alk_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0_-Z"
PEER = "3f" * 32


# ------------------------------------------------------------------------------------ golden lines


def test_golden_connection_opened() -> None:
    line = logfmt.connection_opened("203.0.113.50", "tls").line()
    assert line == 'level=INFO msg="connection opened" remote_addr=203.0.113.50 transport=tls'


def test_golden_auth_attempt() -> None:
    line = logfmt.auth_attempt("203.0.113.50", "root", FP, "reject").line()
    assert line == (
        'level=INFO msg="auth attempt" remote_addr=203.0.113.50 user="root" '
        "key_fingerprint=SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg result=reject"
    )


def test_golden_connection_closed() -> None:
    line = logfmt.connection_closed("203.0.113.50", 12.3454).line()
    assert line == 'level=INFO msg="connection closed" remote_addr=203.0.113.50 duration=12.345'


@pytest.mark.parametrize("reason", ["too_many_connections", "too_many_auth_attempts"])
def test_golden_connection_rejected(reason: str) -> None:
    line = logfmt.connection_rejected("203.0.113.50", reason).line()
    assert line == f'level=INFO msg="connection rejected" remote_addr=203.0.113.50 reason={reason}'


def test_golden_with_time() -> None:
    line = logfmt.connection_opened("203.0.113.50", "tls").line(time=TS)
    assert line == (
        "time=2023-11-14T22:13:20.123Z "
        'level=INFO msg="connection opened" remote_addr=203.0.113.50 transport=tls'
    )


def test_golden_iroh_peer_is_last() -> None:
    assert logfmt.connection_opened(None, "iroh", peer=PEER).line() == (
        f'level=INFO msg="connection opened" remote_addr=- transport=iroh peer={PEER}'
    )
    assert logfmt.auth_attempt(None, "alknet", FP, "accept", peer=PEER).line() == (
        f'level=INFO msg="auth attempt" remote_addr=- user="alknet" key_fingerprint={FP} '
        f"result=accept peer={PEER}"
    )
    assert logfmt.connection_closed(None, 1, peer=PEER).line() == (
        f'level=INFO msg="connection closed" remote_addr=- duration=1.000 peer={PEER}'
    )


def test_undecodable_key_gives_dash() -> None:
    line = logfmt.auth_attempt("198.51.100.1", "u", None, "reject").line()
    assert (
        line
        == 'level=INFO msg="auth attempt" remote_addr=198.51.100.1 user="u" key_fingerprint=- result=reject'
    )


def test_golden_config_reload_lines() -> None:
    assert logfmt.config_reload_ok().line() == 'level=INFO msg="config reload" result=ok'
    err = ConfigError(["authorized_keys:3: bad key", "forwarding.rules[2].target: bad"])
    assert logfmt.config_reload_error(err).line() == (
        'level=ERROR msg="config reload" result=error error="authorized_keys:3: bad key"'
    )
    assert logfmt.config_reload_error("x").line() == 'level=ERROR msg="config reload" result=error error="x"'
    assert logfmt.config_reload_restart_required(["server.listen", "login_timeout"]).line() == (
        'level=WARNING msg="config reload" restart_required="server.listen, login_timeout"'
    )
    assert logfmt.config_reload_restart_required(["auth.provider"]).line() == (
        'level=WARNING msg="config reload" restart_required="auth.provider"'
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (12.3454, "12.345"),
        (12.3456, "12.346"),
        (0, "0.000"),
        (0.0004, "0.000"),
        (3600, "3600.000"),
        (-1, "0.000"),
    ],
)
def test_duration_three_decimals(seconds: float, text: str) -> None:
    assert logfmt.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (TS, "2023-11-14T22:13:20.123Z"),
        (1714564800.412, "2024-05-01T12:00:00.412Z"),
        (1714564800.9999, "2024-05-01T12:00:00.999Z"),
    ],
)
def test_time_format(ts: float, text: str) -> None:
    assert logfmt.format_time(ts) == text


# ------------------------------------------------------------------------------------------ escaping


def test_hostile_user_name_cannot_add_a_field() -> None:
    line = logfmt.auth_attempt("203.0.113.50", 'x" remote_addr=192.0.2.1 y="', FP, "reject").line()
    assert 'user="x\\" remote_addr=192.0.2.1 y=\\""' in line
    assert line == (
        'level=INFO msg="auth attempt" remote_addr=203.0.113.50 user="x\\" remote_addr=192.0.2.1 y=\\"" '
        f"key_fingerprint={FP} result=reject"
    )
    assert [k for k, _ in logfmt.parse_line(line)] == [
        "level",
        "msg",
        "remote_addr",
        "user",
        "key_fingerprint",
        "result",
    ]


def test_newline_in_user_name_stays_on_one_line() -> None:
    line = logfmt.auth_attempt("203.0.113.50", "a\nlevel=INFO", FP, "reject").line()
    assert "\n" not in line
    assert 'user="a\\nlevel=INFO"' in line


def test_long_user_name_is_cut() -> None:
    line = logfmt.auth_attempt("203.0.113.50", "n" * 10_000, FP, "reject").line()
    assert f'user="{"n" * 64}\\u2026"' in line
    assert len(line) < 300
    exactly_64 = logfmt.auth_attempt("203.0.113.50", "m" * 64, FP, "reject").line()
    assert f'user="{"m" * 64}"' in exactly_64


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("back\\slash", "back\\\\slash"),
        ('a"b', 'a\\"b'),
        ("cr\rlf\ntab\t", "cr\\rlf\\ntab\\t"),
        ("\x00\x01\x1f\x7f", "\\x00\\x01\\x1f\\x7f"),
        ("caf\xe9", "caf\\xe9"),
        ("\u2028\u2026\uffff", "\\u2028\\u2026\\uffff"),
        ("\U0001f600", "\\U0001f600"),
        ("lone \ud800 and \udfff", "lone \\ud800 and \\udfff"),
        ("~ !#$%&'()*,;<=>?[]^`{|}", "~ !#$%&'()*,;<=>?[]^`{|}"),
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert logfmt.escape(raw) == escaped
    assert logfmt.parse_line(f"k={logfmt.quote(raw)}") == [("k", raw)]


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("transport", "tls", "tls"),
        ("key_fingerprint", FP, FP),
        ("path", "a/b.c:d+e@f-g_h", "a/b.c:d+e@f-g_h"),
        ("reason", "two words", '"two words"'),
        ("reason", "", '""'),
        ("reason", "a=b", '"a=b"'),
        ("reason", "caf\xe9", '"caf\\xe9"'),
        ("port", 40123, "40123"),
        ("ok", True, "true"),
        ("missing", None, "-"),
        ("user", "bob", '"bob"'),
        ("error", "x", '"x"'),
        ("msg", "m", '"m"'),
        ("restart_required", "server.listen", '"server.listen"'),
    ],
)
def test_bare_or_quoted(key: str, value: object, text: str) -> None:
    assert logfmt.format_value(key, value) == text


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        ("203.0.113.50", "203.0.113.50"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        (("203.0.113.50", 50123), "203.0.113.50"),
        (("::ffff:203.0.113.50", 22, 0, 0), "203.0.113.50"),
        ("203.0.113.50:22", "203.0.113.50"),
        ("[2001:db8::1]:22", "2001:db8::1"),
        (ipaddress.ip_address("::ffff:10.0.0.1"), "10.0.0.1"),
        (None, "-"),
        ("", "-"),
        ("example.com", "-"),
        ('1.2.3.4" user="x', "-"),
    ],
)
def test_remote_addr(addr: object, text: str) -> None:
    assert logfmt.normalize_remote_addr(addr) == text
    line = logfmt.format_line("INFO", "m", {"remote_addr": addr})
    assert line == f'level=INFO msg="m" remote_addr={text}'


def test_field_order_is_fixed() -> None:
    line = logfmt.format_line(
        "INFO",
        "m",
        [
            ("peer", PEER),
            ("extra", "1"),
            ("result", "reject"),
            ("key_fingerprint", FP),
            ("user", "u"),
            ("another", "2"),
            ("remote_addr", "203.0.113.50"),
        ],
    )
    keys = [k for k, _ in logfmt.parse_line(line)]
    assert keys == [
        "level",
        "msg",
        "remote_addr",
        "user",
        "key_fingerprint",
        "result",
        "extra",
        "another",
        "peer",
    ]


@pytest.mark.parametrize("key", ["Bad", "with-dash", "1x", "", "time", "level", "msg", "sp ace"])
def test_invalid_field_names_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        logfmt.format_line("INFO", "m", [(key, "v")])
    with pytest.raises(ValueError):
        logfmt.LogEvent(logging.INFO, "m", ((key, "v"),))


def test_duplicate_field_is_refused() -> None:
    with pytest.raises(ValueError):
        logfmt.format_line("INFO", "m", [("a", 1), ("a", 2)])


@pytest.mark.parametrize("line", ["", "level=INFO ", 'msg="unterminated', 'k="a"b', "k=a  j=b", 'k="\\q"'])
def test_parse_line_refuses_garbage(line: str) -> None:
    with pytest.raises(ValueError):
        logfmt.parse_line(line)


# ------------------------------------------------------------------------------- property tests

_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
_ANY_ADDR = st.one_of(
    _ANY_TEXT,
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"::ffff:{ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)}"),
    st.none(),
)
# fail2ban's auth-attempt failregex with <ADDR> widened to any non-space run
_FAILREGEX = re.compile(
    r'^level=INFO msg="auth attempt" remote_addr=(?P<addr>\S+) user="(?:[^"\\]|\\.)*" '
    r"key_fingerprint=\S+ result=reject$"
)


def _check_escaping(msg: str, user: str, error: str, other: str, addr: object) -> None:
    line = logfmt.format_line(
        "INFO",
        msg,
        {"detail": other, "error": error, "user": user, "remote_addr": addr},
        time=TS,
    )
    assert all(0x20 <= ord(c) <= 0x7E for c in line)  # pure printable ASCII: no CR, LF or other control
    pairs = logfmt.parse_line(line)
    assert [k for k, _ in pairs] == ["time", "level", "msg", "remote_addr", "user", "error", "detail"]
    values = dict(pairs)
    assert values["msg"] == msg
    assert values["user"] == logfmt.truncate_user(user)
    assert values["error"] == error
    assert values["detail"] == other
    assert values["remote_addr"] == "-" or ipaddress.ip_address(values["remote_addr"])
    attempt = logfmt.auth_attempt("203.0.113.50", user, FP, "reject").line()
    match = _FAILREGEX.fullmatch(attempt)
    assert match is not None and match.group("addr") == "203.0.113.50"
    assert not _FAILREGEX.fullmatch(logfmt.auth_attempt("203.0.113.50", user, FP, "accept").line())


_PROPERTY = given(msg=_ANY_TEXT, user=_ANY_TEXT, error=_ANY_TEXT, other=_ANY_TEXT, addr=_ANY_ADDR)
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=_QUIET)
@_PROPERTY
def test_escaping_property(msg: str, user: str, error: str, other: str, addr: object) -> None:
    _check_escaping(msg, user, error, other, addr)


@pytest.mark.slow
def test_escaping_property_slow(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("20 000-example run; select it with -m slow")

    @settings(max_examples=20_000, deadline=None, database=None, suppress_health_check=_QUIET)
    @_PROPERTY
    def run(msg: str, user: str, error: str, other: str, addr: object) -> None:
        _check_escaping(msg, user, error, other, addr)

    run()


# ------------------------------------------------------------------------------------- redaction


def test_token_vector_shape() -> None:
    assert len(TOKEN) == 139
    assert len(API_KEY) == 47


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token {TOKEN} end", "token <redacted> end"),
        (f"https://h/x?token={TOKEN}&a=1", "https://h/x?token=<redacted>&a=1"),
        (f"key={API_KEY}.", "key=<redacted>."),
        (f"k{API_KEY}", "k<redacted>"),
        ("alk_short", "alk_short"),
        ("a" * 138, "a" * 138),
        ("a" * 140, "a" * 140),
        (f"{TOKEN}\n{TOKEN}", "<redacted>\n<redacted>"),
    ],
)
def test_redact_secrets(text: str, expected: str) -> None:
    assert logfmt.redact_secrets(text) == expected


# --------------------------------------------------------------------------------- logging setup


@pytest.fixture
def clean_logging() -> Iterator[None]:
    names = ("asyncssh", "asyncssh.sftp", "alknet")
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    for handler in list(root.handlers):
        if handler not in saved_root[1]:
            root.removeHandler(handler)
    root.setLevel(saved_root[0])
    for name, (level, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.filters[:] = filters


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


@pytest.mark.usefixtures("clean_logging")
def test_setup_logging_emits_logfmt_with_time() -> None:
    buf = io.StringIO()
    logfmt.setup_logging("info", "auto", buf, env={})
    log = logging.getLogger("alknet.test")
    logfmt.connection_opened("203.0.113.50", "tls").emit(log)
    logfmt.log_event(log, "warning", "something odd", port=22, user="u", remote_addr="::ffff:10.0.0.1")
    log.info("plain %s message", "formatted")
    log.debug("not at info")
    lines = _lines(buf)
    assert len(lines) == 3
    stamp = r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert re.fullmatch(
        stamp + r'level=INFO msg="connection opened" remote_addr=203\.0\.113\.50 transport=tls', lines[0]
    )
    assert re.fullmatch(
        stamp + r'level=WARNING msg="something odd" remote_addr=10\.0\.0\.1 user="u" port=22', lines[1]
    )
    assert re.fullmatch(stamp + r'level=INFO msg="plain formatted message"', lines[2])


@pytest.mark.usefixtures("clean_logging")
@pytest.mark.parametrize(
    ("log_time", "env"),
    [("auto", {"JOURNAL_STREAM": "8:12345"}), ("never", {}), ("never", {"JOURNAL_STREAM": "8:1"})],
)
def test_no_time_under_journald_or_never(log_time: str, env: dict[str, str]) -> None:
    buf = io.StringIO()
    logfmt.setup_logging("info", log_time, buf, env=env)
    logfmt.connection_closed("203.0.113.50", 12.3454).emit(logging.getLogger("alknet.test"))
    assert _lines(buf) == ['level=INFO msg="connection closed" remote_addr=203.0.113.50 duration=12.345']


@pytest.mark.usefixtures("clean_logging")
def test_journal_stream_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:42")
    buf = io.StringIO()
    logfmt.setup_logging("info", stream=buf)
    logging.getLogger("alknet.test").info("hello")
    assert _lines(buf) == ['level=INFO msg="hello"']


@pytest.mark.usefixtures("clean_logging")
def test_setup_logging_replaces_its_own_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    logfmt.setup_logging("info", "never", first)
    logfmt.setup_logging("info", "never", second)
    logging.getLogger("alknet.test").info("once")
    assert first.getvalue() == ""
    assert _lines(second) == ['level=INFO msg="once"']


def test_setup_logging_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        logfmt.setup_logging("verbose")
    with pytest.raises(ValueError):
        logfmt.setup_logging("info", "always")


@pytest.mark.usefixtures("clean_logging")
def test_asyncssh_below_warning_is_dropped_with_root_at_debug() -> None:
    buf = io.StringIO()
    logfmt.setup_logging("debug", "never", buf)
    assert logging.getLogger().level == logging.DEBUG
    ssh = logging.getLogger("asyncssh")
    assert ssh.level == logging.WARNING
    ssh.debug("Opening direct TCP connection to hidden-target.test, port 4444")
    ssh.info("Opening direct TCP connection to hidden-target.test, port 4444")
    # even when something lowers the asyncssh level again, the filter drops the records
    ssh.setLevel(logging.DEBUG)
    ssh.info("hidden-target.test 4444 via info")
    ssh.handle(ssh.makeRecord("asyncssh", logging.DEBUG, __file__, 1, "hidden-target.test:4444", (), None))
    child = logging.getLogger("asyncssh.sftp")
    child.setLevel(logging.DEBUG)
    child.debug("hidden-target.test 4444 from a child logger")
    ssh.warning("asyncssh warning kept")
    logging.getLogger("alknet.test").debug("alknet debug kept")
    out = buf.getvalue()
    assert "hidden-target" not in out
    assert "4444" not in out
    assert _lines(buf) == ['level=WARNING msg="asyncssh warning kept"', 'level=DEBUG msg="alknet debug kept"']


@pytest.mark.usefixtures("clean_logging")
def test_real_asyncssh_logger_is_capped() -> None:
    from asyncssh.logging import logger as asyncssh_logger

    buf = io.StringIO()
    logfmt.setup_logging("debug", "never", buf)
    asyncssh_logger.info("Opening direct TCP connection to %s", ("hidden-target.test", 4444))
    asyncssh_logger.debug1("Resolved %s", "hidden-target.test")
    assert buf.getvalue() == ""


@pytest.mark.usefixtures("clean_logging")
def test_redaction_in_messages_fields_and_exceptions() -> None:
    buf = io.StringIO()
    logfmt.setup_logging("debug", "never", buf)
    log = logging.getLogger("alknet.test")
    log.info("token %s here", TOKEN)
    log.info(f"api key {API_KEY}")
    logfmt.log_event(log, logging.INFO, "event", detail=f"url?token={TOKEN}", error=API_KEY)
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("failed")
    out = buf.getvalue()
    assert TOKEN not in out
    assert API_KEY not in out
    assert TOKEN[:40] not in out
    lines = _lines(buf)
    assert lines[0] == 'level=INFO msg="token <redacted> here"'
    assert lines[1] == 'level=INFO msg="api key <redacted>"'
    assert lines[2] == 'level=INFO msg="event" error="<redacted>" detail="url?token=<redacted>"'
    assert lines[3].startswith(
        'level=ERROR msg="failed" error="ValueError: bad token <redacted>" traceback="'
    )
    assert len(lines) == 4


@pytest.mark.usefixtures("clean_logging")
def test_exception_without_debug_has_no_traceback() -> None:
    buf = io.StringIO()
    logfmt.setup_logging("info", "never", buf)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("alknet.test").exception("crashed")
    assert _lines(buf) == ['level=ERROR msg="crashed" error="RuntimeError: boom\\nsecond line"']


def test_log_event_refuses_bad_names_at_the_call_site() -> None:
    log = logging.getLogger("alknet.test")
    with pytest.raises(ValueError):
        logfmt.log_event(log, logging.INFO, "m", **{"bad-name": 1})
    with pytest.raises(ValueError):
        logfmt.log_event(log, "nonsense", "m")


def test_formatter_survives_bad_fields_from_elsewhere() -> None:
    record = logging.LogRecord("alknet.test", logging.INFO, __file__, 1, "m", None, None)
    record.alknet_fields = (("Bad Key", "v"),)
    record.created = TS
    assert (
        logfmt.LogfmtFormatter(with_time=True).format(record)
        == 'time=2023-11-14T22:13:20.123Z level=INFO msg="m"'
    )
