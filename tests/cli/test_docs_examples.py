"""The user documentation is executable: every example in docs/policy-cookbook.md and docs/configuration.md
runs here, and contrib/systemd/alknet.service is checked.

Conventions in the Markdown files (HTML comments are invisible when rendered):

- ``<!-- config: NAME -->`` on the line before a ```` ```toml ```` block names it. The block is written to
  ``<tmp>/NAME/alknet.toml``. Every cookbook block must be named.
- ``<!-- file: NAME/PATH -->`` before any fenced block writes its text to ``<tmp>/NAME/PATH`` (for example
  the ``authorized_keys`` next to a config); an absolute ``PATH`` is placed under ``<tmp>/root``.
- ``<!-- not-tested: REASON -->`` before a TOML block of configuration.md skips loading it (it must still
  parse as TOML); the reason must not be empty.
- ``<!-- expect-error: TEXT -->`` before a TOML block: loading it exits 2 with ``TEXT`` on stderr.
- In a ```` ```sh ```` block, ``# config: NAME`` selects a config block; each following line of the form
  ``[VAR=value ...] alknet policy check|test ...`` is run in-process with ``main()`` in ``<tmp>/NAME``, and
  the lines right after it give the expected result: ``# -> LINE`` per stdout line, the last one ending in
  ``(exit N)`` (``# -> (exit N)`` when stdout is empty), and ``# stderr: TEXT`` for text that stderr must
  contain. Without a ``# stderr:`` line stderr must be empty.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alknet.cli.main import main
from alknet.core.auth.keys import generate_private_key, write_keypair
from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.policy.forwarding import run_policy_tests
from alknet.core.tls.selfsigned import generate_self_signed

ROOT = Path(__file__).resolve().parents[2]
COOKBOOK = ROOT / "docs" / "policy-cookbook.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
UNIT = ROOT / "contrib" / "systemd" / "alknet.service"
CONFIG_NAME = "alknet.toml"

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*([a-z-]+):\s*(.*?)\s*-->$")
_MARKERS = ("config", "file", "not-tested", "expect-error")
_COMMAND = re.compile(r"^((?:[A-Z][A-Z0-9_]*=\S*\s+)*)alknet policy (?:check|test)\b")
_EXPECT_OUT = re.compile(r"^# -> ?(.*?)(?:\s*\(exit (\d+)\))?$")
_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


# ------------------------------------------------------------------------------------------ doc parsing


@dataclass
class Block:
    doc: Path
    lang: str
    line: int  # 1-based line of the opening fence
    text: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def name(self) -> str:
        return self.markers.get("config") or f"block-{self.line}"


@dataclass
class Command:
    where: str
    config: str | None
    env: dict[str, str]
    argv: list[str]
    stdout: list[str]
    exit: int | None
    stderr: list[str]


def parse_blocks(text: str, doc: Path) -> list[Block]:
    """Fenced blocks with the markers on the nearest non-blank line above each fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{doc.name}:{start + 1}: unterminated code block")
        markers: dict[str, str] = {}
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        while j >= 0 and (mm := _MARKER.match(lines[j].strip())) and mm.group(1) in _MARKERS:
            markers[mm.group(1)] = mm.group(2)
            j -= 1
        body = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(doc, m.group(1), start + 1, body, markers))
        i = end + 1
    return blocks


def parse_commands(block: Block) -> list[Command]:
    """The ``alknet policy`` lines of one sh block with the expectations written after them."""
    lines = block.text.splitlines()
    config: str | None = None
    out: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("# config:"):
            config = line.split(":", 1)[1].strip()
            continue
        m = _COMMAND.match(line)
        if m is None:
            continue
        where = f"{block.doc.name}:{block.line + i}"
        words = shlex.split(line)
        env: dict[str, str] = {}
        while words and "=" in words[0] and words[0] != "alknet":
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words[0] == "alknet", where
        cmd = Command(where, config, env, words[1:], [], None, [])
        while i < len(lines) and lines[i].strip().startswith(("# -> ", "# ->", "# stderr:")):
            exp = lines[i].strip()
            i += 1
            if exp.startswith("# stderr:"):
                cmd.stderr.append(exp.split(":", 1)[1].strip())
                continue
            assert cmd.exit is None, f"{where}: output after the '(exit N)' line"
            em = _EXPECT_OUT.match(exp)
            assert em is not None, f"{where}: bad expectation {exp!r}"
            if em.group(1):
                cmd.stdout.append(em.group(1))
            if em.group(2) is not None:
                cmd.exit = int(em.group(2))
        out.append(cmd)
    return out


def _load(doc: Path) -> list[Block]:
    return parse_blocks(doc.read_text(encoding="utf-8"), doc)


COOKBOOK_BLOCKS = _load(COOKBOOK)
CONFIGURATION_BLOCKS = _load(CONFIGURATION)
ALL_BLOCKS = COOKBOOK_BLOCKS + CONFIGURATION_BLOCKS
COOKBOOK_TOML = [b for b in COOKBOOK_BLOCKS if b.lang == "toml"]
CONFIGURATION_TOML = [b for b in CONFIGURATION_BLOCKS if b.lang == "toml"]
COMMANDS = [c for b in ALL_BLOCKS if b.lang == "sh" for c in parse_commands(b)]


# ------------------------------------------------------------------------------------------- materialise


def _place(tmp: Path, name: str, path: str) -> Path:
    """Where a config's file goes: relative to its directory, or absolute paths under ``<tmp>/root``."""
    if path.startswith("/"):
        return tmp / "root" / path.lstrip("/")
    return tmp / name / path


def write_doc_files(blocks: list[Block], tmp: Path) -> dict[str, Path]:
    """Write every named TOML block and every ``file:`` block; return config name -> directory."""
    dirs: dict[str, Path] = {}
    for block in blocks:
        if block.lang == "toml" and "config" in block.markers:
            directory = tmp / block.name
            directory.mkdir(parents=True, exist_ok=True)
            (directory / CONFIG_NAME).write_text(block.text, encoding="utf-8")
            dirs[block.name] = directory
    for block in blocks:
        if "file" in block.markers:
            name, _, rel = block.markers["file"].partition("/")
            assert name in dirs and rel, f"{block.where}: file marker must be CONFIG/PATH of a named config"
            target = _place(tmp, name, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
    return dirs


# Dotted keys of the configuration schema that name files, and what to put there when the doc does not.
_FILE_KEYS: dict[tuple[str, ...], str] = {
    ("state_dir",): "dir",
    ("server", "key"): "ssh-key",
    ("server", "endpoint_key"): "ssh-key",
    ("auth", "authorized_keys"): "empty",
    ("auth", "cert_authorities"): "empty",
    ("listeners", "tls", "cert"): "tls-cert",
    ("listeners", "tls", "key"): "tls-key",
    ("listeners", "tls", "acme_ca_bundle"): "tls-cert",
}


def _file_values(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for keys, kind in _FILE_KEYS.items():
        tables: list[Any] = [doc]
        for key in keys[:-1]:
            nxt: list[Any] = []
            for t in tables:
                value = t.get(key) if isinstance(t, dict) else None
                nxt.extend(value if isinstance(value, list) else [value] if value is not None else [])
            tables = nxt
        for t in tables:
            value = t.get(keys[-1]) if isinstance(t, dict) else None
            if isinstance(value, str) and value and not value.startswith("~"):
                yield value, kind


def prepare_config(block: Block, tmp: Path, dirs: dict[str, Path]) -> Path:
    """Write a configuration.md block so it loads anywhere: absolute paths are moved under ``<tmp>/root``
    and every file it names is created (real keys and certificates) unless a ``file:`` block wrote it."""
    text = block.text
    doc = tomllib.loads(text)
    directory = dirs.get(block.name) or tmp / block.name
    directory.mkdir(parents=True, exist_ok=True)
    tls_pair: tuple[bytes, bytes] | None = None
    for value, kind in _file_values(doc):
        if value.startswith("/"):
            target = _place(tmp, block.name, value)
            text = text.replace(f'"{value}"', f'"{target}"')
        else:
            target = directory / value
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            target.mkdir(mode=0o700)
        elif kind == "ssh-key":
            write_keypair(target, generate_private_key(), "docs-test")
        elif kind in ("tls-cert", "tls-key"):
            tls_pair = tls_pair or generate_self_signed()
            target.write_bytes(tls_pair[0] if kind == "tls-cert" else tls_pair[1])
        else:
            target.write_text("", encoding="utf-8")
    path = directory / CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: no ALKNET_* variables except ALKNET_HOME in a temporary directory."""
    for var in list(os.environ):
        if var.startswith("ALKNET_") or var == "JOURNAL_STREAM":
            monkeypatch.delenv(var)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "state"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def count_tests(text: str) -> int:
    return len(tomllib.loads(text).get("forwarding", {}).get("tests", []))


# --------------------------------------------------------------------------------------- the conventions


def test_marker_parsing() -> None:
    """The conventions themselves, on a synthetic document."""
    doc = Path("synthetic.md")
    text = (
        "<!-- config: a -->\n```toml\nx = 1\n```\n\n"
        "<!-- not-tested: needs a real ACME server -->\n\n```toml\ny = 2\n```\n"
        "<!-- not-tested: -->\n```toml\nz = 3\n```\n"
        "```sh\n# config: a\nX=1 alknet policy check --target a:1\n# stderr: warn\n# -> deny default (exit 1)\n"
        "alknet policy test\n# -> 0 passed, 0 failed\n# -> (exit 0)\nalknet keygen\n```\n"
    )
    blocks = parse_blocks(text, doc)
    assert [(b.lang, b.markers) for b in blocks] == [
        ("toml", {"config": "a"}),
        ("toml", {"not-tested": "needs a real ACME server"}),
        ("toml", {"not-tested": ""}),
        ("sh", {}),
    ]
    assert [b.name for b in blocks[:2]] == ["a", f"block-{blocks[1].line}"]
    assert [b for b in blocks if "not-tested" in b.markers and not b.markers["not-tested"]] == [blocks[2]]
    first, second = parse_commands(blocks[3])
    assert (first.config, first.env, first.argv) == ("a", {"X": "1"}, ["policy", "check", "--target", "a:1"])
    assert (first.stdout, first.exit, first.stderr) == (["deny default"], 1, ["warn"])
    assert (second.stdout, second.exit, second.stderr) == (["0 passed, 0 failed"], 0, [])


def test_documents_have_examples() -> None:
    assert len(COOKBOOK_TOML) >= 8
    assert len(CONFIGURATION_TOML) >= 3
    assert sum(1 for c in COMMANDS if c.argv[:2] == ["policy", "check"]) >= 20


def test_cookbook_blocks_are_named_configs() -> None:
    names = [b.markers.get("config") for b in COOKBOOK_TOML]
    assert all(names), [b.where for b in COOKBOOK_TOML if "config" not in b.markers]
    assert len(set(names)) == len(names), names
    assert not any("not-tested" in b.markers or "expect-error" in b.markers for b in COOKBOOK_TOML)
    config_names = {b.name for b in CONFIGURATION_TOML if "config" in b.markers}
    assert not config_names & set(names), "config names must be unique across both documents"


def test_untested_blocks_give_a_reason() -> None:
    for block in CONFIGURATION_TOML:
        if "not-tested" in block.markers:
            assert block.markers["not-tested"].strip(), f"{block.where}: not-tested needs a reason"
            tomllib.loads(block.text)  # still valid TOML


def test_every_policy_command_is_checked() -> None:
    """Every ``alknet policy check|test`` line in an sh block names a config and its result."""
    for cmd in COMMANDS:
        assert cmd.config is not None, f"{cmd.where}: no '# config: NAME' before the command"
        assert cmd.exit is not None, f"{cmd.where}: no '# -> ... (exit N)' after the command"
    docs_check_lines = [
        line
        for b in ALL_BLOCKS
        if b.lang != "sh"
        for line in b.text.splitlines()
        if line.startswith("alknet policy check")
    ]
    assert docs_check_lines == [], "alknet policy check examples belong in sh blocks"


# ------------------------------------------------------------------------------------------ the cookbook


@pytest.mark.parametrize("block", COOKBOOK_TOML, ids=lambda b: b.name)
def test_cookbook_recipe_passes_its_tests(
    block: Block, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = write_doc_files(COOKBOOK_BLOCKS, home)
    monkeypatch.chdir(dirs[block.name])
    code, out, err = run(capsys, ["policy", "test", "--config", CONFIG_NAME])
    lines = out.splitlines()
    assert code == 0, f"{block.where}:\n{out}{err}"
    if "proxy = " in block.text and '/8"' in block.text:
        # a deny rule on addresses behind an outbound proxy: the §7.5 warning, and nothing else
        assert err == "alknet: warning: address rules do not apply to host names behind an outbound proxy\n"
    else:
        assert err == ""
    n = count_tests(block.text)
    assert n >= 1
    assert lines[-1] == f"{n} passed, 0 failed"
    assert [line.split(" ", 1)[0] for line in lines[:-1]] == ["ok"] * n


@pytest.mark.parametrize("block", COOKBOOK_TOML, ids=lambda b: b.name)
def test_cookbook_tests_cover_every_rule(block: Block, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``[[forwarding.rules]]`` and ``[[forwarding.listen]]`` entry decides at least one test."""
    dirs = write_doc_files(COOKBOOK_BLOCKS, home)
    monkeypatch.chdir(dirs[block.name])
    loaded = ConfigSources(Overrides(config=Path(CONFIG_NAME)), {}, check_server_files=False).load()
    policy = loaded.dynamic.forwarding
    proxy = loaded.static is not None and loaded.static.proxy is not None
    results = run_policy_tests(policy, proxy=proxy)
    decided = {(r.test.bind, r.decision.rule) for r in results if r.passed}
    missing = [f"rules[{i}]" for i in range(1, len(policy.rules) + 1) if (False, i) not in decided]
    missing += [f"listen[{i}]" for i in range(1, len(policy.listen or ()) + 1) if (True, i) not in decided]
    assert missing == [], f"{block.where}: no test is decided by {missing}"


# ------------------------------------------------------------------------------------ configuration.md


@pytest.mark.parametrize("block", CONFIGURATION_TOML, ids=lambda b: b.name)
def test_configuration_block_loads(
    block: Block, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if "not-tested" in block.markers:
        pytest.skip(f"{block.where}: {block.markers['not-tested']}")
    dirs = write_doc_files(CONFIGURATION_BLOCKS, home)
    path = prepare_config(block, home, dirs)
    monkeypatch.chdir(home)
    code, out, err = run(capsys, ["policy", "test", "--config", str(path)])
    if "expect-error" in block.markers:
        assert code == 2, f"{block.where}: expected a configuration error\n{out}{err}"
        assert block.markers["expect-error"] in err
        assert err.startswith("alknet: error: ") and err.count("\n") == 1
        return
    assert code == 0, f"{block.where}:\n{out}{err}"
    n = count_tests(block.text)
    assert out.splitlines()[-1] == f"{n} passed, 0 failed"
    assert err == ("" if n else "alknet: warning: no [[forwarding.tests]] in the configuration\n")
    # The stricter load of `alknet serve`: every key and certificate file named must exist.
    ConfigSources(Overrides(config=path), {"ALKNET_HOME": str(home / "state")}).load()


def test_reference_block_sets_every_table(home: Path) -> None:
    """The complete file in configuration.md uses every table of the schema with its documented values."""
    (block,) = [b for b in CONFIGURATION_TOML if b.name == "reference"]
    dirs = write_doc_files(CONFIGURATION_BLOCKS, home)
    path = prepare_config(block, home, dirs)
    doc = tomllib.loads(block.text)
    assert set(doc) == {"state_dir", "server", "listeners", "auth", "rate_limits", "forwarding"} | {
        "storage",
        "flowgraph",
        "secret",
        "client",
        "worker",
    }
    loaded = ConfigSources(Overrides(config=path), {}).load()
    static, dynamic = loaded.static, loaded.dynamic
    assert static is not None
    assert static.state_dir == home / "root" / "var" / "lib" / "alknet"
    assert [spec.url for spec in static.listeners] == [
        "tls://0.0.0.0:443",
        "iroh://0.0.0.0:0",
        "raw+tcp://127.0.0.1:7000",
    ]
    assert (dynamic.rate_limits.max_connections_per_ip, dynamic.rate_limits.max_auth_attempts) == (5, 3)
    assert (dynamic.auth.token_enabled, dynamic.auth.token_max_age) == (True, 300)
    assert str(dynamic.forwarding.default) == "deny" and len(dynamic.forwarding.rules) == 2
    assert static.client.peer is None and static.client.tls_pin is None  # "" = unset, as documented


def test_configuration_documents_every_variable() -> None:
    """Every ALKNET_* variable the loader reads appears in the variables table, and nothing else does."""
    from alknet.core.config.sources import EnvValues

    text = CONFIGURATION.read_text(encoding="utf-8")
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(ALKNET_[A-Z_]+)", section.split("\n\n- ", 1)[0]))
    read = {"ALKNET_" + name.upper() for name in EnvValues.__dataclass_fields__}
    assert documented == read


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", [COOKBOOK, CONFIGURATION], ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        if path.startswith(("http://", "https://")):
            continue
        if path:
            assert (doc.parent / path).exists(), f"{doc.name}: broken link {target}"
        elif anchor:
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor}"


# ----------------------------------------------------------------------------------- commands in the docs


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.where)
def test_documented_command(
    cmd: Command, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = COOKBOOK_BLOCKS if cmd.where.startswith(COOKBOOK.name) else CONFIGURATION_BLOCKS
    dirs = write_doc_files(blocks, home)
    assert cmd.config in dirs, f"{cmd.where}: unknown config {cmd.config!r}"
    block = next(b for b in blocks if b.lang == "toml" and b.name == cmd.config)
    if block.doc == CONFIGURATION:
        prepare_config(block, home, dirs)
    monkeypatch.chdir(dirs[cmd.config])
    for key, value in cmd.env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run(capsys, cmd.argv)
    assert out.splitlines() == cmd.stdout, f"{cmd.where}: stderr was {err!r}"
    assert code == cmd.exit, f"{cmd.where}: stderr was {err!r}"
    if cmd.stderr:
        for text in cmd.stderr:
            assert text in err, f"{cmd.where}: {text!r} not in {err!r}"
    else:
        assert err == "", cmd.where


# ------------------------------------------------------------------------------------------ systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> key -> values (keys may repeat, so configparser's strict mode
    cannot read it; its non-strict mode would silently keep only the last value)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"unit line outside a section or without '=': {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_parses_with_configparser() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert parser.sections() == ["Unit", "Service", "Install"]


def test_unit_settings() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] in ("exec", "simple")
    assert (service["User"], service["Group"]) == ("alknet", "alknet")
    assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("alknet", "0700")
    assert "ALKNET_HOME=/var/lib/alknet" in unit["Service"]["Environment"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/alknet")
    assert exec_start[1] == "serve"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert 3 <= int(service["TimeoutStopSec"]) <= 90  # longer than the 2 s drain, bounded
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # configuration errors do not loop
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    # Logs reach the journal, where JOURNAL_STREAM drops time= and the fail2ban jail reads this unit's lines.
    assert service.get("StandardError", "journal") == "journal"
    assert "PYTHONUNBUFFERED=1" in unit["Service"]["Environment"]
    jail = (ROOT / "contrib" / "fail2ban" / "jail.d" / "alknet.conf").read_text(encoding="utf-8")
    assert f"journalmatch = _SYSTEMD_UNIT={UNIT.name}" in jail
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return tool


def _verifiable_unit(tmp_path: Path) -> Path:
    """The unit with only the install path of the program replaced by this environment's ``alknet``
    (``systemd-analyze verify`` insists that the ExecStart program exists)."""
    installed = Path(sys.executable).with_name("alknet")
    if not installed.exists():
        installed = Path(shutil.which("alknet") or sys.executable)
    text = UNIT.read_text(encoding="utf-8")
    program = shlex.split(parse_unit(text)["Service"]["ExecStart"][-1])[0]
    path = tmp_path / UNIT.name
    path.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={installed} "), encoding="utf-8")
    return path


def test_unit_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    path = _verifiable_unit(tmp_path)
    proc = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert complaints == []  # no "Unknown key", no bad values: verify only warns about those


def test_unit_security_exposure(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    path = _verifiable_unit(tmp_path)
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", proc.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot assess units offline: {proc.stderr.strip()[:200]}")
    # systemd 252 rates the unit 1.6 ("OK"); the headroom is for releases that add checks.
    assert float(m.group(1)) <= 3.0, proc.stdout
