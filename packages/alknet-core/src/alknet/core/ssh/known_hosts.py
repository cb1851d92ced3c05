"""Server host-key checking for the SSH client (transport-and-ssh.md §13).

Exactly one mode per client:

- :class:`PinnedHostKey` (``--host-key SHA256:...``): the server key must have this fingerprint; no
  ``known_hosts`` file is read or written.
- :class:`KnownHostsFile` (the default): ``<state>/known_hosts`` in OpenSSH line format, host field
  ``[host]:port`` for tcp/tls/quic and ``iroh:<endpoint id>`` for iroh. An unknown host is trusted on first
  use: its key is appended and ``level=WARNING msg="new host key trusted on first use" host=... fingerprint=...``
  is logged. A different key is refused.
- :class:`InsecureHostKey` (``--insecure-host-key``): any key, with a WARNING on every connect.

A refusal raises :class:`HostKeyMismatch` (``host key mismatch for <host>: expected SHA256:<a>, got
SHA256:<b>``); the reconnect supervisor treats it as fatal (exit 1), and the file is left unchanged.

Only ``ssh-ed25519`` lines take part in matching (the client negotiates nothing else). Host patterns may be
plain names, comma lists, ``*``/``?`` wildcards, ``!`` negations, or hashed (``|1|salt|hash``); marker lines
(``@cert-authority``, ``@revoked``) and malformed lines are skipped, as the client accepts no host
certificates. This module is light: it does not import asyncssh.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from alknet.core import logfmt
from alknet.core.auth.keys import ED25519, PublicKey, is_fingerprint, strict_b64decode
from alknet.core.errors import ConfigError, KeyFormatError
from alknet.core.state import ensure_private_dir

__all__ = [
    "HostKeyError",
    "HostKeyMismatch",
    "HostKeyVerifier",
    "InsecureHostKey",
    "KnownHostEntry",
    "KnownHostsFile",
    "PinnedHostKey",
    "host_key_verifier",
    "iroh_host_field",
    "known_hosts_host",
    "parse_host_key_pin",
    "parse_known_hosts",
]

log = logging.getLogger("alknet.client")

_MAX_FILE = 4 * 1024 * 1024  # a known_hosts file larger than this is not something alknet wrote


class HostKeyError(Exception):
    """The server host key was refused; never retried (the client exits 1)."""


class HostKeyMismatch(HostKeyError):
    """``host key mismatch for <host>: expected SHA256:<a>, got SHA256:<b>``."""

    def __init__(self, host: str, expected: str, actual: str) -> None:
        super().__init__(f"host key mismatch for {host}: expected {expected}, got {actual}")
        self.host = host
        self.expected = expected
        self.actual = actual


def known_hosts_host(host: str, port: int) -> str:
    """The ``known_hosts`` host field for tcp, tls and quic: always ``[host]:port`` (names lower-cased)."""
    bare = host.strip("[]")
    if ":" not in bare:
        bare = bare.lower()
    return f"[{bare}]:{port}"


def iroh_host_field(endpoint_id: str) -> str:
    """The ``known_hosts`` host field for iroh: ``iroh:<endpoint id>``."""
    return f"iroh:{endpoint_id.lower()}"


def parse_host_key_pin(value: str) -> str:
    """Validate a ``--host-key`` value (``SHA256:`` + 43 base64 characters); ``ConfigError`` otherwise."""
    text = value.strip()
    if not is_fingerprint(text):
        raise ConfigError(f"invalid --host-key {value[:80]!r}: expected SHA256:<43 base64 characters>")
    return text


class HostKeyVerifier(ABC):
    """Checks the host key presented during the SSH handshake. ``host`` names the server in messages."""

    host: str

    @abstractmethod
    def verify(self, key: PublicKey) -> None:
        """Accept ``key`` (return) or raise :class:`HostKeyError`."""


class PinnedHostKey(HostKeyVerifier):
    """``--host-key``: exactly this fingerprint; ``known_hosts`` is neither read nor written."""

    def __init__(self, host: str, fingerprint: str) -> None:
        self.host = host
        self.fingerprint = parse_host_key_pin(fingerprint)

    def verify(self, key: PublicKey) -> None:
        if not hmac.compare_digest(key.fingerprint, self.fingerprint):
            raise HostKeyMismatch(self.host, self.fingerprint, key.fingerprint)


class InsecureHostKey(HostKeyVerifier):
    """``--insecure-host-key``: any key, logged as a WARNING on every connect."""

    def __init__(self, host: str) -> None:
        self.host = host

    def verify(self, key: PublicKey) -> None:
        logfmt.log_event(
            log,
            logging.WARNING,
            "host key not verified (--insecure-host-key)",
            host=self.host,
            fingerprint=key.fingerprint,
        )


# ------------------------------------------------------------------------------------------ the file format


@dataclass(frozen=True, slots=True)
class KnownHostEntry:
    """One usable ``ssh-ed25519`` line: its host patterns and key."""

    patterns: tuple[str, ...]
    key: PublicKey
    line_no: int

    def matches(self, host: str) -> bool:
        """OpenSSH semantics: a negated pattern that matches wins; otherwise any positive match."""
        positive = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            body = pattern[1:] if negated else pattern
            if _pattern_matches(body, host):
                if negated:
                    return False
                positive = True
        return positive


def _pattern_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("|1|"):
        parts = pattern.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
        except (binascii.Error, ValueError):
            return False
        mac = hmac.new(salt, host.encode("utf-8"), hashlib.sha1).digest()
        return hmac.compare_digest(mac, digest)
    if "*" in pattern or "?" in pattern:
        return _glob(pattern, host)
    return pattern.lower() == host.lower()


def _glob(pattern: str, host: str) -> bool:
    # Only '*' and '?' are wildcards in known_hosts; brackets (``[host]:port``) are literal characters.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, host.lower()) is not None


def parse_known_hosts(text: str) -> list[KnownHostEntry]:
    """The usable ``ssh-ed25519`` entries of a ``known_hosts`` text, in file order.

    Comments, blank lines, marker lines (``@cert-authority``, ``@revoked``), other key types and malformed
    lines are skipped (OpenSSH ignores bad lines too).
    """
    entries: list[KnownHostEntry] = []
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("@"):
            continue
        fields = line.split(None, 3)
        if len(fields) < 3 or fields[1] != ED25519:
            continue
        try:
            key = PublicKey.from_blob(strict_b64decode(fields[2]))
        except (ValueError, KeyFormatError):
            continue
        patterns = tuple(p for p in fields[0].split(",") if p)
        if patterns:
            entries.append(KnownHostEntry(patterns, key, line_no))
    return entries


class KnownHostsFile(HostKeyVerifier):
    """Trust on first use in an OpenSSH-format file (``<state>/known_hosts``).

    The file is read on every check, under an exclusive ``flock`` (POSIX) so that two clients recording the
    same host at once write one line. It is created with mode 0600 (its directory 0700) when the first key
    is recorded; nothing is written when a key matches or mismatches.
    """

    def __init__(self, path: str | os.PathLike[str], host: str) -> None:
        self.path = Path(path)
        self.host = host

    def lookup(self) -> list[PublicKey]:
        """The keys recorded for this host (empty when the file or the host is missing)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(_MAX_FILE)
        except FileNotFoundError:
            return []
        return self._keys_in(data)

    def _keys_in(self, data: bytes) -> list[PublicKey]:
        text = data.decode("utf-8", "replace")
        return [e.key for e in parse_known_hosts(text) if e.matches(self.host)]

    def verify(self, key: PublicKey) -> None:
        known = self.lookup()
        if known:
            self._check(known, key)
            return
        try:
            recorded = self._record(key)
        except (OSError, ConfigError) as exc:
            logfmt.log_event(
                log,
                logging.WARNING,
                "cannot record host key",
                host=self.host,
                error=str(exc) or type(exc).__name__,
            )
            recorded = True
        if recorded:
            logfmt.log_event(
                log,
                logging.WARNING,
                "new host key trusted on first use",
                host=self.host,
                fingerprint=key.fingerprint,
            )

    def _check(self, known: Sequence[PublicKey], key: PublicKey) -> None:
        if any(hmac.compare_digest(k.blob, key.blob) for k in known):
            return
        raise HostKeyMismatch(self.host, known[0].fingerprint, key.fingerprint)

    def _record(self, key: PublicKey) -> bool:
        """Append ``key`` unless a (possibly different) key for the host appeared meanwhile.

        Returns True if the line was written; raises :class:`HostKeyMismatch` if another writer recorded a
        different key first.
        """
        if not self.path.parent.exists():
            ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with _locked(fd):
                data = _read_all(fd)
                known = self._keys_in(data)
                if known:
                    self._check(known, key)
                    return False
                b64 = base64.b64encode(key.blob).decode("ascii")
                line = f"{self.host} {ED25519} {b64}\n".encode()
                if data and not data.endswith(b"\n"):
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
        finally:
            os.close(fd)
        return True


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < _MAX_FILE:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    if sys.platform == "win32":  # pragma: no cover - no flock; appends are still whole lines
        yield
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def host_key_verifier(
    host: str,
    *,
    pin: str | None = None,
    insecure: bool = False,
    known_hosts: str | os.PathLike[str] | None = None,
) -> HostKeyVerifier:
    """The verifier for one server: ``pin`` (``--host-key``), ``insecure`` (``--insecure-host-key``), or the
    ``known_hosts`` file. ``host`` is the host field (:func:`known_hosts_host`, :func:`iroh_host_field`).

    Raises ``ConfigError`` for a bad pin, for ``pin`` together with ``insecure``, and when none of the three
    is given.
    """
    if pin is not None and insecure:
        raise ConfigError("--host-key cannot be combined with --insecure-host-key")
    if pin is not None:
        return PinnedHostKey(host, pin)
    if insecure:
        return InsecureHostKey(host)
    if known_hosts is None:
        raise ConfigError(
            "host key checking needs a pin (--host-key), a known_hosts file, or --insecure-host-key"
        )
    return KnownHostsFile(known_hosts, host)
