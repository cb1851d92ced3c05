"""``alknet keygen``: write an OpenSSH Ed25519 key pair, random or derived from seed words (cli.md §5).

With ``--from-mnemonic`` / ``--new-mnemonic`` the key is derived with ``alknet.secret`` (secret.md §10):
identity ``m/74'/0'/0'/0'``, host ``m/74'/0'/1'/0'``, device N ``m/74'/0'/0'/{N}'``. The words are read as
cli.md §1 says (no-echo prompt, or stdin lines; never a flag or an environment variable). Every usage error,
an existing output file and invalid words are reported before anything is written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.context import Context
from alknet.cli.errors import CliError, UsageError
from alknet.cli.secret_input import read_mnemonic, read_new_passphrase
from alknet.cli.state import state_dir_for
from alknet.core.auth.keys import generate_private_key, write_keypair
from alknet.core.state import HOST_KEY, IDENTITY_KEY, check_state_dir_permissions, ensure_state_dir
from alknet.secret import (
    InvalidMnemonicError,
    generate_mnemonic,
    keygen_from_mnemonic,
    validate_mnemonic,
)
from alknet.secret.mnemonic import WORD_COUNTS

__all__ = ["NEW_MNEMONIC_WARNING", "register"]

PROG = "alknet keygen"
_COMMENTS = {"identity": "alknet-identity", "host": "alknet-host"}
_MAX_DEVICE = 2**31 - 1

NEW_MNEMONIC_WARNING = (
    "write these words down now and keep them safe: they are the only backup of this key, alknet does "
    "not store them anywhere, and anyone who has them can rebuild the key"
)


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "keygen",
        add_globals,
        help="write an OpenSSH Ed25519 key pair (random, or derived from seed words)",
        description=(
            "Write an OpenSSH Ed25519 key pair: PATH (mode 0600, created exclusively) and PATH.pub (0644).\n"
            "Prints one line: fingerprint=SHA256:... endpoint_id=<hex> path=PATH\n"
            "\n"
            "With --from-mnemonic the key is derived from BIP39 seed words (identity m/74'/0'/0'/0',\n"
            "host m/74'/0'/1'/0', device N m/74'/0'/0'/N'), so the same words always give the same key.\n"
            "The words are never taken from a flag or an environment variable: they are asked for without\n"
            "echo when stdin is a terminal, otherwise read from stdin, line 1 the words and line 2 the\n"
            "BIP39 passphrase (with --passphrase). With --new-mnemonic fresh words are generated and printed\n"
            "once on stdout before the key line; its --passphrase is asked twice, or read from stdin line 1."
        ),
    )
    p.add_argument(
        "-o",
        "--output",
        "-f",
        dest="output",
        metavar="PATH",
        help="private key path (default: <state>/id_ed25519, or <state>/host_key with --role host)",
    )
    p.add_argument(
        "--role",
        choices=("identity", "host", "device"),
        default="identity",
        help="what the key is for; sets the default path, the derivation path and the public key comment "
        "(alknet-identity, alknet-host, alknet-device-N); device only with a mnemonic option "
        "(default: identity)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-mnemonic",
        action="store_true",
        help="derive the key from BIP39 seed words read from the terminal (no echo) or stdin line 1",
    )
    source.add_argument(
        "--new-mnemonic",
        action="store_true",
        help="generate seed words, print them once on stdout, then act as --from-mnemonic",
    )
    p.add_argument(
        "--words",
        type=int,
        choices=tuple(WORD_COUNTS),
        metavar="12|15|18|21|24",
        help="number of words for --new-mnemonic (default: 24)",
    )
    p.add_argument(
        "--device", type=int, metavar="N", help="device number N >= 1 (required for --role device)"
    )
    p.add_argument(
        "--passphrase",
        action="store_true",
        help="also read a BIP39 passphrase (prompt without echo, or stdin line 2; default: none)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(_run=run)


def _check_flags(args: argparse.Namespace) -> None:
    """Usage errors (exit 2), all found before any file or stdin is touched."""
    mnemonic = bool(args.from_mnemonic or args.new_mnemonic)
    if args.words is not None and not args.new_mnemonic:
        raise UsageError("--words needs --new-mnemonic", PROG)
    if args.passphrase and not mnemonic:
        raise UsageError("--passphrase needs --from-mnemonic or --new-mnemonic", PROG)
    if args.role == "device":
        if not mnemonic:
            raise UsageError("--role device needs --from-mnemonic or --new-mnemonic", PROG)
        if args.device is None:
            raise UsageError("--role device needs --device N (N >= 1)", PROG)
        if args.device < 1:
            raise UsageError(
                "--device must be >= 1 (device 0 is the primary identity: use --role identity)", PROG
            )
        if args.device > _MAX_DEVICE:
            raise UsageError(f"--device must be at most {_MAX_DEVICE}", PROG)
    elif args.device is not None:
        raise UsageError("--device is only valid with --role device", PROG)


def _refuse_existing(path: Path) -> None:
    for target in (path, path.with_name(path.name + ".pub")):
        if os.path.lexists(target):
            raise CliError(f"{target} already exists (use --force to overwrite)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    _check_flags(args)
    if args.from_mnemonic or args.new_mnemonic:
        return _run_mnemonic(args, ctx)
    role: str = args.role
    if args.output:
        path = Path(args.output).expanduser()
    else:
        state = state_dir_for(ctx)
        ensure_state_dir(state)
        path = state / (HOST_KEY if role == "host" else IDENTITY_KEY)
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist", PROG)
    key = generate_private_key()
    try:
        pub = write_keypair(path, key, _COMMENTS[role], force=bool(args.force))
    except FileExistsError as exc:
        raise CliError(f"{exc.filename or path} already exists (use --force to overwrite)") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    ctx.out(f"fingerprint={pub.fingerprint} endpoint_id={pub.endpoint_id} path={args.output or path}")
    return 0


def _run_mnemonic(args: argparse.Namespace, ctx: Context) -> int:
    role: str = args.role
    device: int | None = args.device if role == "device" else None
    state: Path | None = None
    if args.output:
        path = Path(args.output).expanduser()
        if not path.parent.is_dir():
            raise UsageError(f"directory {path.parent} does not exist", PROG)
    else:
        state = state_dir_for(ctx)
        if state.exists():
            check_state_dir_permissions(state)
        path = state / (HOST_KEY if role == "host" else IDENTITY_KEY)
    if not args.force:
        _refuse_existing(path)

    if args.new_mnemonic:
        passphrase = read_new_passphrase(prog=PROG) if args.passphrase else ""
        words = generate_mnemonic(args.words or 24)
    else:
        words, passphrase = read_mnemonic(passphrase=bool(args.passphrase), prog=PROG)
        try:
            validate_mnemonic(words)
        except InvalidMnemonicError as exc:  # names a count or a position, never a word
            raise CliError(str(exc)) from None

    if state is not None:
        ensure_state_dir(state)
    if args.new_mnemonic:
        ctx.out(words)
        ctx.warn(NEW_MNEMONIC_WARNING)
    try:
        result = keygen_from_mnemonic(
            path, words, passphrase, role=role, device=device, overwrite=bool(args.force)
        )
    except FileExistsError as exc:
        raise CliError(f"{exc.filename or path} already exists (use --force to overwrite)") from None
    except InvalidMnemonicError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:  # a passphrase that is not valid Unicode text; messages never quote it
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    ctx.out(f"fingerprint={result.fingerprint} endpoint_id={result.endpoint_id} path={args.output or path}")
    return 0
