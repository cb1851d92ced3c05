"""Shared constants and helpers of the auth tests (imported by the test modules of this directory)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings

from alknet.core.auth.keys import generate_private_key, public_key_of

REF_SEED = bytes(range(32))
REF_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
REF_FP = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
REF_TOKEN_KEY_ID = "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
REF_TOKEN = (
    "Vkdap1RjR0wChd9dvyvKtz2mUTWIOem3dIGy6rEHcIwAAAAAZVPxAAHQqPbo0lcpPt9tPTVOmpHbY7ssx_ICqH6olz6Mq"
    "agZT2Yv4hURcIUXGWsssvxqIrfOgGSOMNUBDrALIxCtMQs"
)
REF_TS = 1_700_000_000

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def ref_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(REF_SEED)


def new_key() -> Ed25519PrivateKey:
    return generate_private_key()


def line_of(key: Ed25519PrivateKey, options: str = "", comment: str = "") -> str:
    line = public_key_of(key, comment).line
    return f"{options} {line}" if options else line


def new_line(options: str = "", comment: str = "") -> str:
    return line_of(generate_private_key(), options, comment)


def fuzz_settings() -> settings:
    return settings.get_profile("alknet-auth-fuzz")


def slow_fuzz_settings() -> settings:
    return settings.get_profile("alknet-auth-fuzz-slow")


def require_slow(request: pytest.FixtureRequest) -> None:
    """Slow property variants run only when selected with ``-m slow``."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("20 000-example property run; select it with -m slow")


def ssh_keygen(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ssh-keygen (skips the test when openssh-client is missing)."""
    if not Path(SSH_KEYGEN).exists():
        pytest.skip("needs ssh-keygen (Debian package openssh-client)")
    proc = subprocess.run(
        [SSH_KEYGEN, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ssh-keygen {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def keygen_fingerprint(path: Path) -> str:
    """The SHA256 fingerprint ``ssh-keygen -lf`` prints for ``path``."""
    return ssh_keygen("-l", "-E", "sha256", "-f", str(path)).stdout.split()[1]
