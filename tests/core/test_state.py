"""State directory resolution, creation and permission checks (overview.md §6)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from alknet.core import state
from alknet.core.errors import ConfigError

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------- resolution


def test_cli_wins_over_everything(tmp_path: Path) -> None:
    env = {"ALKNET_HOME": str(tmp_path / "a"), "XDG_DATA_HOME": str(tmp_path / "x")}
    assert state.resolve_state_dir(tmp_path / "b", env, str(tmp_path / "c")) == tmp_path / "b"
    assert state.resolve_state_dir(str(tmp_path / "b"), env, None) == tmp_path / "b"


def test_env_wins_over_config(tmp_path: Path) -> None:
    env = {"ALKNET_HOME": str(tmp_path / "a")}
    assert state.resolve_state_dir(None, env, str(tmp_path / "c")) == tmp_path / "a"


def test_config_wins_over_platform_default(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "x")}
    assert state.resolve_state_dir(None, env, str(tmp_path / "c")) == tmp_path / "c"


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    env = {"ALKNET_HOME": "", "XDG_DATA_HOME": ""}
    got = state.resolve_state_dir("", env, "", platform="linux", home=tmp_path)
    assert got == tmp_path / ".local" / "share" / "alknet"
    assert state.resolve_state_dir("", {"ALKNET_HOME": str(tmp_path / "a")}, "") == tmp_path / "a"


def test_linux_default_without_xdg(tmp_path: Path) -> None:
    got = state.resolve_state_dir(None, {}, None, platform="linux", home=tmp_path)
    assert got == tmp_path / ".local" / "share" / "alknet"


def test_xdg_data_home_absolute_is_used(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    assert (
        state.resolve_state_dir(None, env, None, platform="linux", home=tmp_path)
        == tmp_path / "data" / "alknet"
    )
    assert state.resolve_state_dir(None, env, None, platform="freebsd14", home=tmp_path) == (
        tmp_path / "data" / "alknet"
    )


def test_xdg_data_home_relative_is_ignored(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": "relative/path"}
    got = state.resolve_state_dir(None, env, None, platform="linux", home=tmp_path)
    assert got == tmp_path / ".local" / "share" / "alknet"


def test_macos_default_ignores_xdg(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    got = state.resolve_state_dir(None, env, None, platform="darwin", home=tmp_path)
    assert got == tmp_path / "Library" / "Application Support" / "alknet"


def test_windows_default(tmp_path: Path) -> None:
    env = {"LOCALAPPDATA": "C:\\Users\\ana\\AppData\\Local"}
    got = state.resolve_state_dir(None, env, None, platform="win32", home=tmp_path)
    assert got == Path("C:\\Users\\ana\\AppData\\Local") / "alknet"
    fallback = state.resolve_state_dir(None, {}, None, platform="win32", home=tmp_path)
    assert fallback == tmp_path / "AppData" / "Local" / "alknet"


def test_tilde_is_expanded(tmp_path: Path) -> None:
    assert state.resolve_state_dir(None, {}, "~/alk", home=tmp_path) == tmp_path / "alk"
    assert state.resolve_state_dir(None, {"ALKNET_HOME": "~"}, None, home=tmp_path) == tmp_path


def test_default_uses_the_real_home_when_not_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    got = state.resolve_state_dir(None, {}, None, platform="linux")
    assert got == tmp_path / ".local" / "share" / "alknet"


def test_file_names() -> None:
    assert (state.HOST_KEY, state.HOST_KEY_PUB) == ("host_key", "host_key.pub")
    assert (state.CLIENT_KEY, state.CLIENT_KEY_PUB) == ("id_ed25519", "id_ed25519.pub")
    assert (state.IDENTITY_KEY, state.IDENTITY_KEY_PUB) == ("id_ed25519", "id_ed25519.pub")
    assert (state.AUTHORIZED_KEYS, state.KNOWN_HOSTS, state.SYSTEM_DB) == (
        "authorized_keys",
        "known_hosts",
        "system.db",
    )
    assert (state.SELF_SIGNED_CERT, state.SELF_SIGNED_KEY) == ("tls/self-signed.pem", "tls/self-signed.key")
    assert state.SERVICE_SOCKET == "run/service.sock"
    org = "0b3c5f7e-8a1d-4c2b-9e6f-1a2b3c4d5e6f"
    assert state.tenant_db_name(org) == f"tenant-{org}.db"
    for bad in ("", "../x", "a/b", "a\\b", ".hidden"):
        with pytest.raises(ValueError):
            state.tenant_db_name(bad)


# ------------------------------------------------------------------------------ creation and modes


@posix_only
@pytest.mark.usefixtures("umask_022")
def test_ensure_state_dir_creates_parents_and_0700(tmp_path: Path) -> None:
    target = tmp_path / "p" / "q" / "alknet"
    assert state.ensure_state_dir(target) == target
    assert target.is_dir()
    assert _mode(target) == 0o700
    assert _mode(tmp_path / "p") == 0o755  # parents: ordinary directories
    # a second call on the existing directory is fine and changes nothing
    state.ensure_state_dir(target)
    assert _mode(target) == 0o700


@posix_only
def test_ensure_state_dir_0700_even_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        target = state.ensure_state_dir(tmp_path / "strict")
    finally:
        os.umask(old)
    assert _mode(target) == 0o700


@posix_only
@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o500])
def test_state_dir_not_writable_by_others_is_accepted(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "s"
    target.mkdir()
    target.chmod(mode)
    try:
        state.check_state_dir_permissions(target)
        assert state.ensure_state_dir(target) == target
        assert _mode(target) == mode  # never chmod-ed
    finally:
        target.chmod(0o700)


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o702, 0o1777])
def test_state_dir_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "s"
    target.mkdir()
    target.chmod(mode)
    with pytest.raises(ConfigError) as info:
        state.ensure_state_dir(target)
    assert str(info.value) == f"permissions {mode:04o} on {target} are too open (need 0700)"
    assert _mode(target) == mode  # untouched
    with pytest.raises(ConfigError):
        state.check_state_dir_permissions(target)


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        state.check_state_dir_permissions(target)
    expected = "^cannot create directory " + re.escape(str(target / "sub")) + ": "
    with pytest.raises(ConfigError, match=expected):
        state.ensure_state_dir(target / "sub")


def test_missing_state_dir_check_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        state.check_state_dir_permissions(tmp_path / "absent")


@posix_only
def test_private_file_0644_is_refused_with_the_exact_message(tmp_path: Path) -> None:
    key = tmp_path / "host_key"
    key.write_text("secret")
    key.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        state.check_private_file(key)
    assert str(info.value) == f"permissions 0644 on {key} are too open (need 0600)"
    assert info.value.errors == [str(info.value)]
    assert _mode(key) == 0o644
    assert key.read_text() == "secret"  # untouched


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o660, 0o666])
def test_private_file_with_group_or_other_bits_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    key.chmod(mode)
    with pytest.raises(ConfigError, match=f"^permissions {mode:04o} on .* are too open \\(need 0600\\)$"):
        state.check_private_file(key)


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_file_owner_only_is_accepted(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    key.chmod(mode)
    state.check_private_file(key)


def test_missing_private_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        state.check_private_file(tmp_path / "absent")


@posix_only
@pytest.mark.usefixtures("umask_022")
def test_ensure_private_dir_for_subdirectories(tmp_path: Path) -> None:
    root = state.ensure_state_dir(tmp_path / "st")
    tls = state.ensure_private_dir(root / state.TLS_DIR)
    acme = state.ensure_private_dir(root / state.ACME_DIR / "acme.example" / "certs" / "example.com")
    assert _mode(tls) == 0o700
    assert _mode(acme) == 0o700
