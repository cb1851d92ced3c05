r"""logfmt log lines for alknet (``auth-and-config.md`` §9, ``cli.md`` §1).

Every line is pure ASCII and has the shape::

    [time=<RFC 3339 UTC, ms, Z> ]level=<LEVEL> msg="<text>" <key>=<value> ...

``time=`` is left out when ``JOURNAL_STREAM`` is set (journald stamps lines itself) or with
``--log-time=never``.

Escaping: ``msg``, ``user``, ``error`` (and ``restart_required``) are always double-quoted; any other value
is written bare only if it matches ``[A-Za-z0-9._:/+@-]+``, otherwise quoted. Inside quotes ``\`` -> ``\\``,
``"`` -> ``\"``, LF/CR/TAB -> ``\n``/``\r``/``\t``, every other character outside 0x20-0x7E -> ``\xHH``,
``\uHHHH`` or ``\UHHHHHHHH`` (lone surrogates included). User names longer than 64 characters are cut to 64
and end with ``\u2026``. ``remote_addr`` is always normalised to a bare IP (IPv4-mapped reduced, IPv6
compressed) or ``-``. Field order is fixed: ``remote_addr, user, key_fingerprint, transport, result, reason,
duration, error, restart_required``, then any other field in the order given, and ``peer`` always last.

Structured events -- the one API for callers::

    from alknet.core import logfmt

    log = logging.getLogger("alknet.core.ssh.server")
    logfmt.log_event(log, logging.INFO, "remote forward bound", port=40123)
    logfmt.connection_closed(("203.0.113.50", 50123), 12.3454).emit(log)

``log_event(logger, level, msg, /, **fields)`` attaches the fields to the record (attribute
``alknet_fields``); ``LogfmtFormatter`` renders them. The event helpers ``connection_opened``,
``auth_attempt``, ``connection_closed``, ``connection_rejected``, ``config_reload_ok``,
``config_reload_error`` and ``config_reload_restart_required`` return a ``LogEvent`` whose ``line()`` is the
exact text (tests compare it byte for byte) and whose ``emit(logger)`` logs it. Plain
``logger.info("text %s", arg)`` calls work too: the message becomes ``msg="..."`` with no fields.

``setup_logging(level, log_time)`` installs the formatter on the root logger's stderr handler, together with
``RedactionFilter`` (``alk_`` API keys and 139-character token-shaped words become ``<redacted>``) and
``AsyncsshFilter`` (asyncssh records below WARNING are dropped even when the root logger is at DEBUG; asyncssh
logs every forwarded destination at INFO). ``asyncssh.set_debug_level`` is never called.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import os
import re
import sys
import time as _time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, TypeAlias

__all__ = [
    "ALWAYS_QUOTED",
    "FIELDS_ATTR",
    "FIELD_ORDER",
    "MAX_USER_CHARS",
    "REDACTED",
    "AsyncsshFilter",
    "LogEvent",
    "LogfmtFormatter",
    "RedactionFilter",
    "RemoteAddr",
    "auth_attempt",
    "config_reload_error",
    "config_reload_ok",
    "config_reload_restart_required",
    "connection_closed",
    "connection_opened",
    "connection_rejected",
    "escape",
    "format_duration",
    "format_line",
    "format_time",
    "format_value",
    "log_event",
    "normalize_ip",
    "normalize_remote_addr",
    "parse_line",
    "quote",
    "redact_secrets",
    "setup_logging",
    "truncate_user",
]

#: Record attribute that carries the structured fields (a tuple of ``(key, value)`` pairs).
FIELDS_ATTR = "alknet_fields"
#: Values of these keys are always double-quoted.
ALWAYS_QUOTED = frozenset({"msg", "user", "error", "restart_required"})
#: Fixed order of the known fields; other fields follow in the order given, ``peer`` is always last.
FIELD_ORDER: tuple[str, ...] = (
    "remote_addr",
    "user",
    "key_fingerprint",
    "transport",
    "result",
    "reason",
    "duration",
    "error",
    "restart_required",
)
MAX_USER_CHARS = 64
REDACTED = "<redacted>"

RemoteAddr: TypeAlias = "str | ipaddress.IPv4Address | ipaddress.IPv6Address | tuple[Any, ...] | None"

_RANK = {key: i for i, key in enumerate(FIELD_ORDER)}
_RESERVED = frozenset({"time", "level", "msg"})
_KEY_RE = re.compile(r"[a-z_][a-z0-9_]*")
_BARE_RE = re.compile(r"[A-Za-z0-9._:/+@-]+")
_ESCAPE_RE = re.compile(r'[\\"]|[^\x20-\x7e]')
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# alk_ API keys (alk_ + 43 base64url characters; longer runs are redacted whole) and 139-character words made
# only of base64url characters (the shape of a signed timestamp token, auth-and-config.md §5.1).
_SECRET_RE = re.compile(r"alk_[A-Za-z0-9_-]{43,}|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{139}(?![A-Za-z0-9_-])")


# ----------------------------------------------------------------------------------------------- escaping


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    simple = _SIMPLE_ESCAPES.get(char)
    if simple is not None:
        return simple
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """Escape ``text`` for use inside double quotes; the result is printable ASCII without a bare ``"``."""
    return _ESCAPE_RE.sub(_escape_char, text)


def quote(text: str) -> str:
    """``text`` escaped and wrapped in double quotes."""
    return '"' + escape(text) + '"'


def truncate_user(name: str) -> str:
    """User names longer than 64 characters are cut to 64 and end with U+2026 (logged as ``\\u2026``)."""
    if len(name) > MAX_USER_CHARS:
        return name[:MAX_USER_CHARS] + "\u2026"
    return name


def redact_secrets(text: str) -> str:
    """Replace ``alk_`` API keys and 139-character token-shaped words with ``<redacted>``."""
    if len(text) < 47:  # shorter than an alk_ key: nothing to redact
        return text
    return _SECRET_RE.sub(REDACTED, text)


def _value_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _value_text(value.value)
    if isinstance(value, str):
        return value
    return str(value)


def format_value(key: str, value: object) -> str:
    """One value as written after ``key=`` (``None`` -> ``-``, booleans -> ``true``/``false``)."""
    text = _value_text(value)
    if key == "user":
        text = truncate_user(text)
    if key in ALWAYS_QUOTED or not _BARE_RE.fullmatch(text):
        return quote(text)
    return text


# ------------------------------------------------------------------------------------------ remote_addr


def normalize_ip(addr: object) -> str | None:
    """The IP of ``addr`` in log/limiter form, or ``None`` when there is none.

    Accepts an IP string (an IPv6 zone is dropped), an ``ipaddress`` object, ``"1.2.3.4:5"``/``"[::1]:5"``
    or a socket address tuple ``(host, port, ...)``. IPv4-mapped IPv6 is reduced to IPv4; IPv6 is compressed.
    Anything that is not an IP gives ``None``.
    """
    if isinstance(addr, tuple):
        addr = addr[0] if addr else None
    if addr is None:
        return None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = addr
    elif isinstance(addr, str):
        text = addr.strip()
        match = re.fullmatch(r"\[([^\]]+)\](?::\d+)?|(\d+\.\d+\.\d+\.\d+):\d+", text)
        if match:
            text = match.group(1) or match.group(2)
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
    else:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip).split("%", 1)[0]
    return str(ip)


def normalize_remote_addr(addr: object) -> str:
    """``remote_addr`` field value: the normalised IP, or ``-`` when there is none."""
    return normalize_ip(addr) or "-"


def format_duration(seconds: float) -> str:
    """Seconds with exactly three decimals (``12.345``); negative or non-finite values give ``0.000``."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    return f"{seconds:.3f}"


def format_time(timestamp: float) -> str:
    """RFC 3339, UTC, milliseconds, ``Z`` suffix: ``2024-05-01T12:00:00.123Z``."""
    seconds = math.floor(timestamp)
    # truncate like logging's msecs; the 0.001 ms slack absorbs float representation error of the timestamp
    millis = min(int((timestamp - seconds) * 1000 + 0.001), 999)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds)) + f".{millis:03d}Z"


# --------------------------------------------------------------------------------------------- lines

Fields: TypeAlias = "Mapping[str, object] | Iterable[tuple[str, object]]"


def _ordered_fields(fields: Fields) -> list[tuple[str, object]]:
    items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    seen: set[str] = set()
    for key, _ in items:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"invalid log field name {key!r}")
        if key in _RESERVED:
            raise ValueError(f"log field name {key!r} is reserved")
        if key in seen:
            raise ValueError(f"duplicate log field {key!r}")
        seen.add(key)
    other = len(FIELD_ORDER)
    # sorted() is stable: unknown fields keep the caller's order between the known ones and ``peer``.
    return sorted(items, key=lambda kv: _RANK.get(kv[0], other + (kv[0] == "peer")))


def _level_name(level: int | str) -> str:
    if isinstance(level, int):
        name = logging.getLevelName(level)
        return name if isinstance(name, str) and _BARE_RE.fullmatch(name) else f"LEVEL{level}"
    name = level.upper()
    return name if _BARE_RE.fullmatch(name) else "INFO"


def format_line(level: int | str, msg: str, fields: Fields = (), *, time: float | None = None) -> str:
    """One complete log line (without the trailing newline).

    ``level`` is a logging level number or name; ``time`` is a unix timestamp, or ``None`` to leave ``time=``
    out. Raises ``ValueError`` for an invalid, reserved or duplicate field name.
    """
    parts: list[str] = []
    if time is not None:
        parts.append("time=" + format_time(time))
    parts.append("level=" + _level_name(level))
    parts.append("msg=" + quote(msg))
    for key, value in _ordered_fields(fields):
        if key == "remote_addr":
            value = normalize_remote_addr(value)
        parts.append(f"{key}={format_value(key, value)}")
    return " ".join(parts)


_PAIR_RE = re.compile(r'([a-z_][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')
_UNESCAPE_RE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.DOTALL)
_UNESCAPE_SIMPLE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _unescape_one(match: re.Match[str]) -> str:
    hex_digits = match.group(1) or match.group(2) or match.group(3)
    if hex_digits:
        return chr(int(hex_digits, 16))
    char = match.group(4)
    if char not in _UNESCAPE_SIMPLE:
        raise ValueError(f"invalid escape \\{char}")
    return _UNESCAPE_SIMPLE[char]


def parse_line(line: str) -> list[tuple[str, str]]:
    """Split a logfmt line back into ``(key, value)`` pairs, unquoting and unescaping quoted values.

    The inverse of ``format_line`` (tests and log readers use it); raises ``ValueError`` on anything else.
    """
    pairs: list[tuple[str, str]] = []
    pos = 0
    if not line:
        raise ValueError("empty log line")
    while pos < len(line):
        match = _PAIR_RE.match(line, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unparseable log line at offset {pos}")
        key, raw = match.group(1), match.group(2)
        value = _UNESCAPE_RE.sub(_unescape_one, raw[1:-1]) if raw.startswith('"') else raw
        pairs.append((key, value))
        pos = match.end()
    if line.endswith(" "):
        raise ValueError("trailing space in log line")
    return pairs


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One structured log event: ``line()`` renders it, ``emit(logger)`` logs it."""

    level: int
    msg: str
    fields: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        _ordered_fields(self.fields)  # validate names now, not when the line is written

    def line(self, *, time: float | None = None) -> str:
        return format_line(self.level, self.msg, self.fields, time=time)

    def emit(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        if logger.isEnabledFor(self.level):
            logger.log(self.level, self.msg, extra={FIELDS_ATTR: self.fields}, stacklevel=2)


def _levelno(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    return number


def log_event(
    logger: logging.Logger | logging.LoggerAdapter[Any], level: int | str, msg: str, /, **fields: object
) -> None:
    """Log ``msg`` with structured ``fields`` (rendered in the fixed field order by ``LogfmtFormatter``).

    ``level`` is a number or a name (``"info"``). Field names must be ``[a-z_][a-z0-9_]*`` and not
    ``time``/``level``/``msg``; a bad name raises ``ValueError`` here, not in the handler.
    """
    levelno = _levelno(level)
    items = tuple(fields.items())
    _ordered_fields(items)
    if logger.isEnabledFor(levelno):
        logger.log(levelno, msg, extra={FIELDS_ATTR: items}, stacklevel=2)


def _with_peer(fields: list[tuple[str, object]], peer: str | None) -> tuple[tuple[str, object], ...]:
    if peer is not None:
        fields.append(("peer", peer))
    return tuple(fields)


def connection_opened(remote_addr: RemoteAddr, transport: str, *, peer: str | None = None) -> LogEvent:
    """``level=INFO msg="connection opened" remote_addr=<ip> transport=<kind>[ peer=<id>]``."""
    return LogEvent(
        logging.INFO,
        "connection opened",
        _with_peer([("remote_addr", normalize_remote_addr(remote_addr)), ("transport", transport)], peer),
    )


def auth_attempt(
    remote_addr: RemoteAddr,
    user: str,
    key_fingerprint: str | None,
    result: str,
    *,
    peer: str | None = None,
) -> LogEvent:
    """``level=INFO msg="auth attempt" remote_addr=<ip> user="<name>" key_fingerprint=<fp|-> result=<r>``.

    ``result`` is ``accept`` or ``reject``; ``key_fingerprint=None`` (undecodable key blob) logs ``-``.
    """
    return LogEvent(
        logging.INFO,
        "auth attempt",
        _with_peer(
            [
                ("remote_addr", normalize_remote_addr(remote_addr)),
                ("user", user),
                ("key_fingerprint", key_fingerprint),
                ("result", result),
            ],
            peer,
        ),
    )


def connection_closed(remote_addr: RemoteAddr, duration: float, *, peer: str | None = None) -> LogEvent:
    """``level=INFO msg="connection closed" remote_addr=<ip> duration=<seconds, 3 decimals>``."""
    return LogEvent(
        logging.INFO,
        "connection closed",
        _with_peer(
            [("remote_addr", normalize_remote_addr(remote_addr)), ("duration", format_duration(duration))],
            peer,
        ),
    )


def connection_rejected(remote_addr: RemoteAddr, reason: str, *, peer: str | None = None) -> LogEvent:
    """``level=INFO msg="connection rejected" remote_addr=<ip> reason=<reason>``.

    ``reason`` is ``too_many_connections`` or ``too_many_auth_attempts``.
    """
    return LogEvent(
        logging.INFO,
        "connection rejected",
        _with_peer([("remote_addr", normalize_remote_addr(remote_addr)), ("reason", reason)], peer),
    )


def config_reload_ok() -> LogEvent:
    """``level=INFO msg="config reload" result=ok``."""
    return LogEvent(logging.INFO, "config reload", (("result", "ok"),))


def config_reload_error(error: str | BaseException) -> LogEvent:
    """``level=ERROR msg="config reload" result=error error="<first error>"``.

    A ``ConfigError`` (anything with a non-empty ``errors`` list) contributes its first error.
    """
    if isinstance(error, BaseException):
        errors = getattr(error, "errors", None)
        text = str(errors[0]) if isinstance(errors, list) and errors else str(error) or type(error).__name__
    else:
        text = error
    return LogEvent(logging.ERROR, "config reload", (("result", "error"), ("error", text)))


def config_reload_restart_required(keys: Iterable[str]) -> LogEvent:
    """``level=WARNING msg="config reload" restart_required="<dotted keys>"`` (keys joined by ``, ``)."""
    unique = list(dict.fromkeys(keys))
    return LogEvent(logging.WARNING, "config reload", (("restart_required", ", ".join(unique)),))


# ------------------------------------------------------------------------------------ logging glue


def _is_asyncssh(name: str) -> bool:
    return name == "asyncssh" or name.startswith("asyncssh.")


class AsyncsshFilter(logging.Filter):
    """Drops records of the ``asyncssh`` logger (and its children) below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _is_asyncssh(record.name)


class RedactionFilter(logging.Filter):
    """Rewrites a record so that no ``alk_`` key or token-shaped word reaches a later handler or formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: keep the template, drop the arguments
            message = str(record.msg)
        record.msg = redact_secrets(message)
        record.args = None
        fields = getattr(record, FIELDS_ATTR, None)
        if fields:
            setattr(
                record,
                FIELDS_ATTR,
                tuple((k, redact_secrets(v) if isinstance(v, str) else v) for k, v in fields),
            )
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt lines.

    A record's structured fields come from its ``alknet_fields`` attribute. An attached exception adds
    ``error="<Type>: <message>"`` (unless the record already has ``error``) and, with ``include_traceback``,
    ``traceback="..."`` (escaped, so still one line). Every text value is passed through ``redact_secrets``.
    """

    def __init__(self, *, with_time: bool = True, include_traceback: bool = False) -> None:
        super().__init__()
        self.with_time = with_time
        self.include_traceback = include_traceback

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        message = redact_secrets(message)
        raw_fields = getattr(record, FIELDS_ATTR, None) or ()
        fields = [(k, redact_secrets(v) if isinstance(v, str) else v) for k, v in raw_fields]
        keys = {k for k, _ in fields}
        exc = record.exc_info[1] if record.exc_info else None
        if record.exc_info and exc is not None:
            if "error" not in keys:
                fields.append(("error", redact_secrets(_exception_text(exc))))
            if self.include_traceback and "traceback" not in keys:
                text = record.exc_text or self.formatException(record.exc_info)
                fields.append(("traceback", redact_secrets(text.rstrip("\n"))))
        if self.include_traceback and record.stack_info and "stack" not in keys:
            fields.append(("stack", redact_secrets(record.stack_info)))
        when = record.created if self.with_time else None
        try:
            return format_line(record.levelno, message, fields, time=when)
        except ValueError:  # bad field names from a caller that bypassed log_event: keep the message
            return format_line(record.levelno, message, (), time=when)


_HANDLER_MARK = "_alknet_logfmt_handler"


def setup_logging(
    level: str,
    log_time: str = "auto",
    stream: TextIO | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send logfmt lines to ``stream`` (default: the current ``sys.stderr``) from the root logger.

    ``level`` is ``debug``, ``info``, ``warning`` or ``error`` (``ValueError`` otherwise). ``log_time`` is
    ``auto`` (a leading ``time=`` unless ``JOURNAL_STREAM`` is set in ``env``, default ``os.environ``) or
    ``never``. A handler installed by an earlier call is replaced; other handlers are left alone. The
    ``asyncssh`` logger is set to WARNING and gets ``AsyncsshFilter`` (the handler gets it too, for asyncssh's
    child loggers).
    Returns the installed handler.
    """
    levelno = _LEVELS.get(level.lower()) if isinstance(level, str) else None
    if levelno is None:
        raise ValueError(f"invalid log level {level!r} (expected debug, info, warning or error)")
    if log_time not in ("auto", "never"):
        raise ValueError(f"invalid log time mode {log_time!r} (expected auto or never)")
    environ = os.environ if env is None else env
    with_time = log_time == "auto" and not environ.get("JOURNAL_STREAM")

    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(LogfmtFormatter(with_time=with_time, include_traceback=levelno <= logging.DEBUG))
    handler.addFilter(AsyncsshFilter())
    handler.addFilter(RedactionFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)

    ssh_logger = logging.getLogger("asyncssh")
    ssh_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, AsyncsshFilter) for f in ssh_logger.filters):
        ssh_logger.addFilter(AsyncsshFilter())
    return handler
