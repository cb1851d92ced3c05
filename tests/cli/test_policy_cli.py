"""``alknet policy check`` / ``alknet policy test`` from the command line (cli.md §7, auth-and-config §7.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alknet.cli.main import main
from alknet.core.auth.keys import generate_private_key, public_key_of, write_keypair

EXAMPLE = Path(__file__).resolve().parents[1] / "core" / "config" / "cli_example.toml"

P1 = """
[forwarding]
default = "deny"
[[forwarding.rules]]
target = "alknet-*"
action = "allow"
[[forwarding.rules]]
target = "db.internal:5432"
action = "allow"
principals = ["role:db"]
[[forwarding.rules]]
target = "*.svc.local:80-443"
action = "allow"
[[forwarding.rules]]
target = "10.0.0.0/8:22"
action = "allow"
principals = ["ops"]
transports = ["tls", "iroh"]
[[forwarding.rules]]
target = "[fd00::/8]:22"
action = "allow"
principals = ["ops"]
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("ALKNET_HOME", "ALKNET_CONFIG", "ALKNET_AUTHORIZED_KEYS", "ALKNET_FORWARDING_DEFAULT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ALKNET_HOME", str(tmp_path / "state"))
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _p1(tmp: Path) -> Path:
    cfg = tmp / "p1.toml"
    cfg.write_text(P1)
    return cfg


@pytest.mark.parametrize(
    ("row", "args", "line", "code"),
    [
        (
            3,
            [
                "--scope",
                "relay:connect",
                "--scope",
                "role:db",
                "--transport",
                "tls",
                "--target",
                "db.internal:5432",
            ],
            'allow rule=2 target="db.internal:5432"',
            0,
        ),
        (
            2,
            ["--scope", "relay:connect", "--transport", "tls", "--target", "db.internal:5432"],
            "deny default",
            1,
        ),
        (
            16,
            ["--scope", "ops", "--transport", "tls", "--target", "0x0a.1.2.3:22"],
            "refused reason=invalid_target",
            1,
        ),
        (14, ["--scope", "ops", "--transport", "tls", "--target", "jump.corp:22"], "needs-address rule=4", 3),
        (
            14,
            ["--scope", "ops", "--transport", "tls", "--target", "jump.corp:22", "--address", "10.9.9.9"],
            'allow rule=4 target="jump.corp:22"',
            0,
        ),
        (1, ["--target", "alknet-control:0"], 'allow rule=1 target="alknet-control:0"', 0),
    ],
)
def test_policy_check_reproduces_decision_table_rows(
    env: Path, capsys: pytest.CaptureFixture[str], row: int, args: list[str], line: str, code: int
) -> None:
    rc, out, err = _run(capsys, "policy", "check", "--config", str(_p1(env)), *args)
    assert (rc, out) == (code, line + "\n"), (row, err)
    assert err == ""


def test_policy_check_bind_uses_builtin_listen_rules(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "policy", "check", "--bind", "--target", "127.0.0.1:8080")
    assert (rc, out) == (0, 'allow reason=builtin_listen target="127.0.0.1:8080"\n')
    rc, out, _ = _run(capsys, "policy", "check", "--bind", "--target", "127.0.0.1:80")
    assert (rc, out) == (1, "deny default\n")
    rc, out, _ = _run(capsys, "policy", "check", "--bind", "--target", "0.0.0.0:8080")
    assert rc == 1 and out.startswith("deny")
    rc, out, _ = _run(capsys, "policy", "check", "--bind", "--target", "example.com:8080")
    assert (rc, out) == (1, "refused reason=invalid_target\n")


def test_policy_check_identity_resolved_from_authorized_keys(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_private_key()
    pub = public_key_of(key, "db")
    ak = env / "ak"
    ak.write_text(f'alknet-scopes="role:db" {pub.line}\n')
    pubfile = env / "k.pub"
    pubfile.write_text(pub.line + "\n")
    cfg = _p1(env)
    for ident in (pub.fingerprint, str(pubfile)):
        rc, out, err = _run(
            capsys,
            "policy",
            "check",
            "--config",
            str(cfg),
            "--authorized-keys",
            str(ak),
            "--identity",
            ident,
            "--target",
            "db.internal:5432",
        )
        assert (rc, out, err) == (0, 'allow rule=2 target="db.internal:5432"\n', "")
    other = public_key_of(generate_private_key()).fingerprint
    rc, out, err = _run(
        capsys,
        "policy",
        "check",
        "--config",
        str(cfg),
        "--authorized-keys",
        str(ak),
        "--identity",
        other,
        "--target",
        "db.internal:5432",
    )
    assert (rc, out) == (1, "deny default\n")
    assert err == "alknet: warning: identity not found in auth config; evaluating with no scopes\n"


def test_policy_check_permitopen_of_the_key_applies(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub = public_key_of(generate_private_key())
    ak = env / "ak"
    ak.write_text(f'permitopen="db.internal:5432" {pub.line}\n')
    rc, out, _ = _run(
        capsys,
        "policy",
        "check",
        "--authorized-keys",
        str(ak),
        "--identity",
        pub.fingerprint,
        "--target",
        "example.com:443",
    )
    assert rc == 1 and out.startswith("deny")


def test_policy_check_forwarding_default_flag(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "policy", "check", "--target", "example.com:443")[:2] == (
        0,
        'allow default target="example.com:443"\n',
    )
    assert _run(capsys, "policy", "check", "--forwarding-default", "deny", "--target", "example.com:443")[
        :2
    ] == (1, "deny default\n")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--target", "db:5432", "--identity", "sha256:abc"], "malformed fingerprint"),
        (["--target", "db"], "--target"),
        (["--target", "db:99999"], "--target"),
        (["--target", "db:1", "--address", "not-an-ip"], "not an IP address"),
        (["--target", "db:1", "--address", "10.0.0.1", "--resolve"], "not allowed with"),
        (["--target", "db:1", "--scope", "bad scope"], "invalid scope"),
        (["--target", "db:1", "--transport", "udp"], "invalid choice"),
        ([], "--target"),
    ],
)
def test_policy_check_usage_errors(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    rc, out, err = _run(capsys, "policy", "check", *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("alknet: error: ") and needle in err
    assert err.rstrip().endswith("(see 'alknet policy check --help')")


def test_policy_check_bad_rule_in_config_names_it(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = env / "bad.toml"
    cfg.write_text('[forwarding]\n[[forwarding.rules]]\ntarget = "10.0.0.0/33"\naction = "allow"\n')
    rc, out, err = _run(capsys, "policy", "check", "--config", str(cfg), "--target", "a.b:1")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "forwarding.rules[1].target" in err


def _example_config(tmp: Path) -> Path:
    """The cli.md §12 example with its file paths moved into ``tmp`` (and the files created)."""
    text = EXAMPLE.read_text()
    etc = tmp / "etc"
    le = tmp / "le"
    etc.mkdir()
    le.mkdir()
    text = text.replace("/etc/alknet/", f"{etc}/").replace("/etc/letsencrypt/live/example.com/", f"{le}/")
    text = text.replace('"/var/lib/alknet"', f'"{tmp / "state"}"')
    key = generate_private_key()
    write_keypair(etc / "host_key", key, "alknet-host")
    write_keypair(etc / "endpoint_key", generate_private_key(), "alknet-host")
    (etc / "authorized_keys").write_text(public_key_of(generate_private_key()).line + "\n")
    (etc / "ca.pub").write_text(public_key_of(generate_private_key()).line + "\n")
    for name in ("fullchain.pem", "privkey.pem"):
        (le / name).write_text("placeholder\n")
    cfg = tmp / "example.toml"
    cfg.write_text(text)
    return cfg


def test_example_config_policy_check_and_test(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _example_config(env)
    rc, out, err = _run(capsys, "policy", "test", "--config", str(cfg))
    assert (rc, out.splitlines()[-1]) == (0, "1 passed, 0 failed"), err
    assert out.splitlines()[0].startswith("ok 1 10.1.2.3:5432 tls")
    rc, out, _ = _run(
        capsys,
        "policy",
        "check",
        "--config",
        str(cfg),
        "--scope",
        "ops",
        "--target",
        "10.1.2.3:5432",
        "--transport",
        "tls",
    )
    assert (rc, out) == (0, 'allow rule=2 target="10.1.2.3:5432"\n')
    rc, out, _ = _run(
        capsys,
        "policy",
        "check",
        "--config",
        str(cfg),
        "--scope",
        "ops",
        "--target",
        "10.1.2.3:5432",
        "--transport",
        "tcp",
    )
    assert (rc, out) == (1, "deny default\n")


def test_policy_test_one_pass_one_fail(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = env / "t.toml"
    cfg.write_text(
        P1
        + '[[forwarding.tests]]\nscopes = ["role:db"]\ntarget = "db.internal:5432"\nexpect = "allow"\nrule = 2\n'
        + '[[forwarding.tests]]\nscopes = ["ops"]\ntarget = "api.svc.local:443"\nexpect = "deny"\n'
    )
    rc, out, err = _run(capsys, "policy", "test", "--config", str(cfg))
    lines = out.splitlines()
    assert rc == 1, err
    assert lines[0].startswith("ok 1 db.internal:5432 tcp scopes=role:db -> allow (rule 2)")
    assert lines[1].startswith("FAIL 2 api.svc.local:443 tcp scopes=ops -> expected deny got allow (rule 3)")
    assert lines[2] == "1 passed, 1 failed"


def test_policy_test_without_tests_warns(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "policy", "test", "--config", str(_p1(env)))
    assert (rc, out) == (0, "0 passed, 0 failed\n")
    assert err == "alknet: warning: no [[forwarding.tests]] in the configuration\n"


def test_policy_test_invalid_config_exits_2(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = env / "t.toml"
    cfg.write_text('[forwarding]\ndefualt = "deny"\n')
    rc, out, err = _run(capsys, "policy", "test", "--config", str(cfg))
    assert rc == 2 and out == "" and "forwarding.defualt" in err and len(err.splitlines()) == 1


def test_policy_without_subcommand(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "policy")
    assert rc == 2 and err == "alknet: error: missing subcommand (see 'alknet policy --help')\n"
