"""contrib/fail2ban against its own sample log (auth-and-config.md §9, overview.md §5).

``contrib/fail2ban/sample.log`` is generated from the logfmt event helpers by ``SAMPLE`` below (the first test
proves the file is byte-for-byte what the server writes). The real ``fail2ban-regex`` must then report exactly
the rejected attempts and the ``too_many_auth_attempts`` lines, with and without the ``time=`` fields, and
never the address a hostile user name tries to inject. Regenerate the file with
``uv run python tests/integration/test_fail2ban_sample.py``.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alknet.core import logfmt

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "fail2ban"
SAMPLE_LOG = CONTRIB / "sample.log"
FILTER = CONTRIB / "filter.d" / "alknet.conf"
JAIL = CONTRIB / "jail.d" / "alknet.conf"

BASE = 1714564800.0  # 2024-05-01T12:00:00Z
HOSTILE = 'x" remote_addr=192.0.2.1 y="'
NEWLINE_INJECTION = 'a\nlevel=INFO msg="x" remote_addr=192.0.2.1 result=reject'
QUOTE_INJECTION = 'q\\" key_fingerprint=- result=reject remote_addr=192.0.2.1 \\'
LONG_NAME = "192.0.2.1 " * 1000
SPEC_FP = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"


def _fp(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


PEER = hashlib.sha256(b"sample iroh peer").hexdigest()

# (milliseconds after BASE, event)
SAMPLE: list[tuple[int, logfmt.LogEvent]] = [
    (0, logfmt.config_reload_ok()),
    # an accepted login: never matched
    (1_250, logfmt.connection_opened("198.51.100.7", "tls")),
    (1_310, logfmt.auth_attempt("198.51.100.7", "alknet", SPEC_FP, "accept")),
    # three rejected keys and the too_many_auth_attempts disconnect from one IP
    (2_000, logfmt.connection_opened("203.0.113.50", "tcp")),
    (2_041, logfmt.auth_attempt("203.0.113.50", "root", _fp("k1"), "reject")),
    (2_057, logfmt.auth_attempt("203.0.113.50", "root", _fp("k2"), "reject")),
    (2_073, logfmt.auth_attempt("203.0.113.50", "root", _fp("k3"), "reject")),
    (2_074, logfmt.connection_rejected("203.0.113.50", "too_many_auth_attempts")),
    (2_075, logfmt.connection_closed("203.0.113.50", 0.075)),
    # hostile user names: quotes, a newline and a 10 000-character name cannot inject 192.0.2.1
    (3_500, logfmt.connection_opened(("::ffff:203.0.113.77", 40022), "tls")),
    (3_612, logfmt.auth_attempt("::ffff:203.0.113.77", HOSTILE, _fp("k4"), "reject")),
    (3_640, logfmt.auth_attempt("::ffff:203.0.113.77", NEWLINE_INJECTION, None, "reject")),
    (3_655, logfmt.auth_attempt("::ffff:203.0.113.77", QUOTE_INJECTION, _fp("k5"), "reject")),
    (3_700, logfmt.auth_attempt("::ffff:203.0.113.77", LONG_NAME, _fp("k6"), "reject")),
    (3_701, logfmt.connection_closed("203.0.113.77", 0.201)),
    # an IPv6 client
    (4_000, logfmt.connection_opened("2001:0db8:0000:0000:0000:0000:0000:0017", "quic")),
    (4_020, logfmt.auth_attempt("2001:db8::17", "deploy", _fp("k7"), "reject")),
    (4_030, logfmt.connection_closed("2001:db8::17", 0.03)),
    # the per-IP connection limit: logged, never matched
    (5_000, logfmt.connection_rejected("198.51.100.9", "too_many_connections")),
    (5_001, logfmt.connection_rejected("198.51.100.9", "too_many_connections")),
    # iroh peers have no IP: remote_addr=- and a trailing peer= field, never matched
    (6_000, logfmt.connection_opened(None, "iroh", peer=PEER)),
    (6_010, logfmt.auth_attempt(None, "alknet", _fp("k8"), "reject", peer=PEER)),
    (6_011, logfmt.connection_closed(None, 0.011, peer=PEER)),
    # a failed reload whose error text looks like a reject line
    (7_000, logfmt.config_reload_error('authorized_keys:3: user="r" remote_addr=192.0.2.1 result=reject')),
    (8_000, logfmt.connection_closed("198.51.100.7", 6.75)),
]

EXPECTED_IPS = [
    "203.0.113.50",
    "203.0.113.50",
    "203.0.113.50",
    "203.0.113.50",
    "203.0.113.77",
    "203.0.113.77",
    "203.0.113.77",
    "203.0.113.77",
    "2001:db8::17",
]

# the filter block exactly as auth-and-config.md §9 prints it
SPEC_FILTER_LINES = [
    "[Definition]",
    r'failregex = ^level=INFO msg="auth attempt" remote_addr=<ADDR> user="(?:[^"\\]|\\.)*" '
    r"key_fingerprint=\S+ result=reject$",
    r'            ^level=INFO msg="connection rejected" remote_addr=<ADDR> reason=too_many_auth_attempts$',
    "ignoreregex =",
    r"datepattern = ^time=%%Y-%%m-%%dT%%H:%%M:%%S(?:\.%%f)?Z\s",
    "              {NONE}",
]


def render_sample() -> str:
    return "".join(event.line(time=BASE + ms / 1000) + "\n" for ms, event in SAMPLE)


def test_sample_log_is_what_the_server_writes() -> None:
    assert SAMPLE_LOG.read_text(encoding="ascii") == render_sample()


def test_sample_log_covers_the_required_cases() -> None:
    text = SAMPLE_LOG.read_text(encoding="ascii")
    assert "result=accept" in text
    assert text.count("result=reject") >= 4
    assert 'user="x\\" remote_addr=192.0.2.1 y=\\""' in text
    assert "reason=too_many_connections" in text
    assert "reason=too_many_auth_attempts" in text
    assert all(line.startswith("time=") for line in text.splitlines())
    assert len(text.splitlines()) == len(SAMPLE)


def test_filter_is_the_spec_filter() -> None:
    assert "\n".join(SPEC_FILTER_LINES) + "\n" in FILTER.read_text(encoding="utf-8")


def test_jail_settings() -> None:
    parser = configparser.RawConfigParser()
    parser.read(JAIL, encoding="utf-8")
    assert parser.sections() == ["alknet"]
    assert dict(parser["alknet"]) == {
        "enabled": "true",
        "filter": "alknet",
        "backend": "systemd",
        "journalmatch": "_SYSTEMD_UNIT=alknet.service",
        "banaction": "%(banaction_allports)s",
        "maxretry": "10",
        "findtime": "10m",
        "bantime": "1h",
    }
    text = JAIL.read_text(encoding="utf-8")
    assert re.search(r"^# backend = auto$", text, re.M)
    assert re.search(r"^# logpath = /var/log/alknet\.log$", text, re.M)


def _fail2ban_regex() -> str:
    exe = shutil.which("fail2ban-regex")
    if exe is None:
        pytest.skip("fail2ban-regex not installed (Debian package fail2ban)")
    return exe


def _matched_ips(exe: str, log: Path) -> list[str]:
    # the documented command line, run from the repository root
    shown = log.relative_to(ROOT) if log.is_relative_to(ROOT) else log
    proc = subprocess.run(
        [exe, "-o", "ip", str(shown), str(FILTER.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout.split()


def test_fail2ban_regex_matches_exactly_the_rejects() -> None:
    ips = _matched_ips(_fail2ban_regex(), SAMPLE_LOG)
    assert ips == EXPECTED_IPS
    assert "192.0.2.1" not in ips


def test_fail2ban_regex_journald_form(tmp_path: Path) -> None:
    exe = _fail2ban_regex()
    stripped = tmp_path / "journal.log"
    lines = SAMPLE_LOG.read_text(encoding="ascii").splitlines()
    stripped.write_text("".join(re.sub(r"^time=\S+ ", "", line) + "\n" for line in lines), encoding="ascii")
    assert "time=" not in stripped.read_text(encoding="ascii")
    ips = _matched_ips(exe, stripped)
    assert ips == EXPECTED_IPS
    assert "192.0.2.1" not in ips


def _fail2ban_confdir(tmp_path: Path) -> tuple[str, Path]:
    exe = shutil.which("fail2ban-client")
    if exe is None or not Path("/etc/fail2ban/jail.conf").is_file():
        pytest.skip("fail2ban-client or /etc/fail2ban not installed (Debian package fail2ban)")
    confdir = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", confdir)
    shutil.copy(FILTER, confdir / "filter.d" / "alknet.conf")
    shutil.copy(JAIL, confdir / "jail.d" / "alknet.conf")
    # only the alknet jail: the distribution's sshd jail needs logs this machine may not have
    (confdir / "jail.d" / "zz-only-alknet.local").write_text("[sshd]\nenabled = false\n", encoding="utf-8")
    return exe, confdir


def _config_test(exe: str, confdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "-c", str(confdir), "-t"], capture_output=True, text=True, timeout=60, check=False
    )


def test_fail2ban_client_accepts_the_jail(tmp_path: Path) -> None:
    exe, confdir = _fail2ban_confdir(tmp_path)
    proc = _config_test(exe, confdir)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_fail2ban_client_accepts_the_file_log_alternative(tmp_path: Path) -> None:
    exe, confdir = _fail2ban_confdir(tmp_path)
    jail = confdir / "jail.d" / "alknet.conf"
    text = jail.read_text(encoding="utf-8")
    text = re.sub(r"^(backend|journalmatch) = .*$\n", "", text, flags=re.M)
    text = text.replace("# backend = auto", "backend = auto")
    text = text.replace("# logpath = /var/log/alknet.log", f"logpath = {SAMPLE_LOG}")
    jail.write_text(text, encoding="utf-8")
    assert "backend = auto" in text and "journalmatch" not in text
    proc = _config_test(exe, confdir)
    assert proc.returncode == 0, proc.stderr + proc.stdout


if __name__ == "__main__":
    SAMPLE_LOG.write_text(render_sample(), encoding="ascii")
    sys.stdout.write(f"wrote {SAMPLE_LOG} ({len(SAMPLE)} lines)\n")
