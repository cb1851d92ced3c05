r"""The state directory (``overview.md`` §6): where it is, creating it, and permission checks.

Resolution order (first that applies): ``--state-dir``, ``ALKNET_HOME``, the top-level ``state_dir`` of
the ``--config`` file, then the platform user data directory -- ``$XDG_DATA_HOME/alknet`` when
``XDG_DATA_HOME`` is an absolute path, else ``~/.local/share/alknet`` (Linux, BSD);
``~/Library/Application Support/alknet`` (macOS); ``%LOCALAPPDATA%\alknet`` (Windows). Empty values count
as unset.

The state dir gets mode 0700 when created, private key files 0600. On POSIX a state dir writable by group or
others, or a private file with any group/other permission bit, is a ``ConfigError`` naming the path and modes:
``permissions 0644 on /x/host_key are too open (need 0600)``.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

from alknet.core.errors import ConfigError

__all__ = [
    "ACME_DIR",
    "AUTHORIZED_KEYS",
    "CLIENT_KEY",
    "CLIENT_KEY_PUB",
    "HOME_ENV",
    "HOST_KEY",
    "HOST_KEY_PUB",
    "IDENTITY_KEY",
    "IDENTITY_KEY_PUB",
    "KNOWN_HOSTS",
    "RUN_DIR",
    "SELF_SIGNED_CERT",
    "SELF_SIGNED_KEY",
    "SERVICE_SOCKET",
    "SYSTEM_DB",
    "TLS_DIR",
    "check_private_file",
    "check_state_dir_permissions",
    "default_state_dir",
    "ensure_private_dir",
    "ensure_state_dir",
    "resolve_state_dir",
    "tenant_db_name",
]

#: Environment variable naming the state dir (same as ``--state-dir``).
HOME_ENV = "ALKNET_HOME"

# File and directory names relative to the state dir (overview.md §6).
HOST_KEY = "host_key"
HOST_KEY_PUB = "host_key.pub"
CLIENT_KEY = "id_ed25519"
CLIENT_KEY_PUB = "id_ed25519.pub"
IDENTITY_KEY = CLIENT_KEY  # the default client identity (same file, the name the CLI uses)
IDENTITY_KEY_PUB = CLIENT_KEY_PUB
AUTHORIZED_KEYS = "authorized_keys"
KNOWN_HOSTS = "known_hosts"
TLS_DIR = "tls"
SELF_SIGNED_CERT = "tls/self-signed.pem"
SELF_SIGNED_KEY = "tls/self-signed.key"
ACME_DIR = "acme"
SYSTEM_DB = "system.db"
RUN_DIR = "run"
SERVICE_SOCKET = "run/service.sock"

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def tenant_db_name(org_id: str) -> str:
    """``tenant-<org_id>.db``; refuses an id that could leave the state dir."""
    if not org_id or org_id.startswith(".") or any(c in org_id for c in "/\\\0:"):
        raise ValueError(f"invalid organisation id {org_id!r}")
    return f"tenant-{org_id}.db"


def _given(value: str | os.PathLike[str] | None) -> str | None:
    if value is None:
        return None
    text = os.fspath(value)
    return text or None


def _expand_home(text: str, home: Path | None) -> Path:
    if text != "~" and not text.startswith(("~/", "~\\")):
        return Path(text)
    base = home if home is not None else Path.home()
    return base / text[2:] if len(text) > 1 else base


def default_state_dir(
    env: Mapping[str, str],
    *,
    platform: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Path:
    """The platform user data directory for alknet (step 4 of the resolution order).

    ``platform`` is a ``sys.platform`` value (default: the running one); ``home`` defaults to ``Path.home()``.
    """
    plat = sys.platform if platform is None else platform
    home_dir = Path(home) if home is not None else Path.home()
    if plat == "darwin":
        return home_dir / "Library" / "Application Support" / "alknet"
    if plat in ("win32", "cygwin"):
        local = env.get("LOCALAPPDATA", "")
        if local and PureWindowsPath(local).is_absolute():
            return Path(local) / "alknet"
        return home_dir / "AppData" / "Local" / "alknet"
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and PurePosixPath(xdg).is_absolute():
        return Path(xdg) / "alknet"
    return home_dir / ".local" / "share" / "alknet"


def resolve_state_dir(
    cli_value: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    config_value: str | os.PathLike[str] | None,
    *,
    platform: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Path:
    """The state dir: ``--state-dir`` > ``ALKNET_HOME`` > top-level ``state_dir`` > platform dir.

    ``env`` is the environment to read (``os.environ`` in production). Empty strings count as unset; a leading
    ``~`` is expanded. Nothing is created or checked here (see ``ensure_state_dir``).
    """
    home_dir = Path(home) if home is not None else None
    for value in (_given(cli_value), env.get(HOME_ENV) or None, _given(config_value)):
        if value is not None:
            return _expand_home(value, home_dir)
    return default_state_dir(env, platform=platform, home=home)


def _mode_error(path: Path, mode: int, need: int) -> ConfigError:
    return ConfigError(f"permissions {mode:04o} on {path} are too open (need {need:04o})")


def _posix() -> bool:
    return os.name == "posix"


def check_state_dir_permissions(path: str | os.PathLike[str]) -> None:
    """Refuse a state dir that is not a directory or is writable by group or others (POSIX only)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"state directory {p} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state directory {p} is not a directory")
    if _posix() and st.st_mode & 0o022:
        raise _mode_error(p, stat.S_IMODE(st.st_mode), _DIR_MODE)


def check_private_file(path: str | os.PathLike[str]) -> None:
    """Refuse a private file (key, token store) with any group or other permission bit (POSIX only).

    Raises ``FileNotFoundError`` when the file does not exist (the caller knows whether that is an error).
    """
    p = Path(path)
    st = p.stat()
    if _posix() and st.st_mode & 0o077:
        raise _mode_error(p, stat.S_IMODE(st.st_mode), _FILE_MODE)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) with mode 0700 for the directory itself; check an existing one.

    Used for the state dir and its private subdirectories (``tls/``, ``acme/...``, ``run/``). A directory
    that cannot be created raises ``ConfigError`` naming it.
    """
    p = Path(path)
    try:
        p.mkdir(mode=_DIR_MODE, parents=True, exist_ok=False)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create directory {p}: {exc.strerror or exc}") from None
    else:
        if _posix():
            os.chmod(p, _DIR_MODE)  # mkdir's mode is filtered by the umask
    check_state_dir_permissions(p)
    return p


def ensure_state_dir(path: str | os.PathLike[str]) -> Path:
    """Create the state dir on demand (parents too; the directory itself 0700) and check its permissions.

    An existing directory is not chmod-ed: if it is writable by group or others this raises ``ConfigError``
    naming the path and its mode.
    """
    return ensure_private_dir(path)
