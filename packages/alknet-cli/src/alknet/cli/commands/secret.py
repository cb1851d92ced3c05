"""``alknet secret``: local use of the secret functions, no server involved (cli.md §11, secret.md).

Subcommands: ``mnemonic new``, ``derive``, ``encrypt``, ``decrypt``, ``rotate``. Words and the BIP39
passphrase are read as cli.md §1 says (:mod:`alknet.cli.secret_input`); when the data also comes from stdin
(no ``--in PATH``) the secret lines come first and the rest of stdin is the data. The seed lives in a
``bytearray`` for the duration of one command and is zeroed afterwards. Nothing secret is written to disk
except what ``--out`` asks for (plaintext or blobs, mode 0600). Every decryption failure is the one message
``decryption failed`` (exit 1) and ``--out`` is then not created.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.context import Context
from alknet.cli.errors import CliError, UsageError
from alknet.cli.secret_input import read_mnemonic, read_stdin_rest
from alknet.secret import (
    CURRENT_KEY_VERSION,
    DecryptionError,
    EncryptedData,
    InvalidMnemonicError,
    InvalidPathError,
    decrypt_with_key,
    derive_aes_key_from_seed,
    derive_ed25519_from_seed,
    derive_secp256k1_from_seed,
    ed25519_public_openssh,
    encrypt_with_key,
    encryption_path,
    endpoint_id,
    generate_mnemonic,
    key_check_value,
    mnemonic_to_seed,
    openssh_fingerprint,
    password_from_key,
    role_comment,
    role_path,
    site_password_path,
)
from alknet.secret.crypto import MAX_KEY_VERSION, MIN_KEY_VERSION, blob_key_version
from alknet.secret.derive import slip10_private_key
from alknet.secret.mnemonic import WORD_COUNTS
from alknet.secret.password import DEFAULT_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from alknet.secret.paths import check_ed25519_path, check_ethereum_path, parse_path

__all__ = ["MNEMONIC_WARNING", "register"]

PREFIX = "alknet secret"
MNEMONIC_WARNING = (
    "these words are not stored anywhere: write them down and keep them safe; "
    "anyone who has them can rebuild every key derived from them"
)
DECRYPTION_FAILED = "decryption failed"
_MAX_DEVICE = 2**31 - 1

_SECRETS_HELP = (
    "The words are never taken from a flag or an environment variable: they are asked for without echo\n"
    "when stdin is a terminal, otherwise read from stdin, line 1 the words and line 2 the BIP39\n"
    "passphrase (with --passphrase)."
)
_DATA_HELP = (
    "Without --in PATH the data is read from stdin too: after the words (and passphrase) lines when\n"
    'stdin is not a terminal, e.g. (echo "$WORDS"; cat notes.txt) | alknet secret encrypt'
)


def _add_passphrase(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase",
        action="store_true",
        help="also read a BIP39 passphrase (prompt without echo, or stdin line 2; default: none)",
    )


def _add_io(p: argparse.ArgumentParser, *, what_in: str, what_out: str) -> None:
    p.add_argument(
        "--in",
        dest="input",
        metavar="PATH|-",
        default="-",
        help=f"{what_in} (default: stdin, after the secret lines)",
    )
    p.add_argument(
        "--out",
        dest="output",
        metavar="PATH|-",
        default="-",
        help=f"write {what_out} to PATH (mode 0600, created exclusively) instead of stdout",
    )
    p.add_argument(
        "--aad", metavar="TEXT", help="additional authenticated data (UTF-8); not stored in the blob"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    _add_passphrase(p)


def register(sub: Any, add_globals: AddGlobals) -> None:
    group = add_command(
        sub,
        "secret",
        add_globals,
        help="seed words, derived keys, site passwords and encrypted blobs, locally (no server)",
        description=(
            "Local use of the secret functions: generate BIP39 seed words, derive keys and site passwords\n"
            "from them, and encrypt or decrypt AES-256-GCM blobs with keys derived from them. Nothing secret\n"
            "is written to disk.\n\n" + _SECRETS_HELP
        ),
    )
    parser_class = type(group)
    inner = group.add_subparsers(dest="secret_command", metavar="COMMAND", parser_class=parser_class)

    mnemonic = add_command(inner, "mnemonic", add_globals, prog_prefix=PREFIX, help="generate seed words")
    words_sub = mnemonic.add_subparsers(dest="mnemonic_command", metavar="COMMAND", parser_class=parser_class)
    new = add_command(
        words_sub,
        "new",
        add_globals,
        prog_prefix=f"{PREFIX} mnemonic",
        help="print fresh BIP39 seed words on one line (stored nowhere)",
    )
    new.add_argument(
        "--words",
        type=int,
        choices=tuple(WORD_COUNTS),
        default=24,
        metavar="12|15|18|21|24",
        help="number of words (default: 24)",
    )
    new.set_defaults(_run=run_mnemonic_new)

    derive = add_command(
        inner,
        "derive",
        add_globals,
        prog_prefix=PREFIX,
        help="derive a public key, a site password or an encryption key check value from seed words",
        description=(
            "Derive from seed words and print, on stdout:\n"
            "  identity, host, device, --path (ed25519): the OpenSSH public key line (stderr: fingerprint\n"
            "      and endpoint id); the same line keygen --from-mnemonic writes to PATH.pub\n"
            "  --path with --curve secp256k1: the compressed public key, hex\n"
            "  password: the site password\n"
            "  encryption: key_version=N check=<first 8 bytes of SHA-256(key), hex>\n"
            "--private adds one line with the 32-byte private key in hex.\n\n" + _SECRETS_HELP
        ),
    )
    what = derive.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--purpose",
        choices=("identity", "host", "device", "password", "encryption"),
        help="what to derive (identity m/74'/0'/0'/0', host m/74'/0'/1'/0', device m/74'/0'/0'/N', "
        "password m/74'/1'/0'/idx', encryption m/74'/2'/0'/(N-2)')",
    )
    what.add_argument(
        "--path",
        metavar="PATH",
        help="an explicit derivation path: ed25519 under m/74'/0'/ (hardened only), "
        "or with --curve secp256k1 m/44'/60'/A'/C/I",
    )
    derive.add_argument("--device", type=int, metavar="N", help="device number N >= 1 (--purpose device)")
    derive.add_argument("--site", metavar="S", help="site name, used exactly as given (--purpose password)")
    derive.add_argument(
        "--length",
        type=int,
        metavar="N",
        help=f"password length {MIN_PASSWORD_LENGTH}..{MAX_PASSWORD_LENGTH} (default: {DEFAULT_PASSWORD_LENGTH})",
    )
    derive.add_argument(
        "--key-version",
        type=int,
        metavar="N",
        help=f"encryption key version N >= 2 (--purpose encryption; default: {CURRENT_KEY_VERSION})",
    )
    derive.add_argument(
        "--curve", choices=("ed25519", "secp256k1"), help="curve of --path (default: ed25519)"
    )
    derive.add_argument("--private", action="store_true", help="also print the private key (hex)")
    _add_passphrase(derive)
    derive.set_defaults(_run=run_derive)

    encrypt = add_command(
        inner,
        "encrypt",
        add_globals,
        prog_prefix=PREFIX,
        help="encrypt data into an AES-256-GCM blob (JSON) with a key derived from seed words",
        description=(
            'Encrypt the input and print the blob {"key_version","salt","iv","data"} (JSON, standard base64).\n'
            "A fresh random IV (and salt) is used every time.\n\n" + _SECRETS_HELP + "\n" + _DATA_HELP
        ),
    )
    encrypt.add_argument(
        "--key-version",
        type=int,
        default=CURRENT_KEY_VERSION,
        metavar="N",
        help=f"key version N >= 2 (default: {CURRENT_KEY_VERSION})",
    )
    _add_io(encrypt, what_in="file to encrypt", what_out="the blob")
    encrypt.set_defaults(_run=run_encrypt)

    decrypt = add_command(
        inner,
        "decrypt",
        add_globals,
        prog_prefix=PREFIX,
        help="decrypt a blob made by 'alknet secret encrypt' and print the plaintext bytes",
        description=(
            "Decrypt a blob with the key of its own key_version and print the plaintext bytes.\n"
            "Any failure (wrong words or passphrase, wrong --aad, tampered or malformed blob) is the one\n"
            "error 'decryption failed' (exit 1); --out is then not created.\n\n"
            + _SECRETS_HELP
            + "\n"
            + _DATA_HELP
        ),
    )
    _add_io(decrypt, what_in="blob file", what_out="the plaintext")
    decrypt.set_defaults(_run=run_decrypt)

    rotate = add_command(
        inner,
        "rotate",
        add_globals,
        prog_prefix=PREFIX,
        help="re-encrypt a blob under another key version (fresh IV and salt)",
        description=(
            "Decrypt a blob with the key of its own key_version and encrypt the plaintext again with\n"
            "--to-version; print the new blob. Write it back where the old blob was.\n\n"
            + _SECRETS_HELP
            + "\n"
            + _DATA_HELP
        ),
    )
    rotate.add_argument(
        "--to-version",
        type=int,
        default=CURRENT_KEY_VERSION,
        metavar="N",
        help=f"key version of the new blob, N >= 2 (default: {CURRENT_KEY_VERSION})",
    )
    _add_io(rotate, what_in="blob file", what_out="the new blob")
    rotate.set_defaults(_run=run_rotate)


# ------------------------------------------------------------------------------------------------ helpers


def _prog(args: argparse.Namespace) -> str:
    return str(getattr(args, "_prog", PREFIX))


@contextmanager
def _seed(words: str, passphrase: str) -> Iterator[bytearray]:
    """The BIP39 seed of the words, zeroed when the block ends. Invalid words: exit 1 naming a position."""
    try:
        seed = mnemonic_to_seed(words, passphrase)
    except InvalidMnemonicError as exc:  # a count, a position or "checksum mismatch"; never a word
        raise CliError(str(exc)) from None
    except ValueError as exc:  # a passphrase that is not valid Unicode text; the message never quotes it
        raise CliError(str(exc)) from None
    try:
        yield seed
    finally:
        seed[:] = bytes(len(seed))


def _key_version(value: int, flag: str, prog: str) -> int:
    if not MIN_KEY_VERSION <= value <= MAX_KEY_VERSION:
        raise UsageError(f"{flag} must be in {MIN_KEY_VERSION} .. {MAX_KEY_VERSION}, got {value}", prog)
    return value


def _aad(args: argparse.Namespace) -> bytes | None:
    text: str | None = args.aad
    if text is None:
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--aad is not valid Unicode text", _prog(args)) from None


class _Output:
    """Where a command's result goes: stdout, or a file created exclusively (0600) once the result exists."""

    def __init__(self, target: str, *, force: bool, prog: str) -> None:
        self.path = None if target == "-" else Path(target).expanduser()
        self.force = force
        if self.path is None:
            return
        if not self.path.parent.is_dir():
            raise UsageError(f"directory {self.path.parent} does not exist", prog)
        if not force and os.path.lexists(self.path):
            raise CliError(f"{self.path} already exists (use --force to overwrite)")

    def write(self, data: bytes) -> None:
        if self.path is None:
            sys.stdout.flush()
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is None:
                sys.stdout.write(data.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                buffer.write(data)
                buffer.flush()
            return
        try:
            _write_file(self.path, data, force=self.force)
        except FileExistsError:
            raise CliError(f"{self.path} already exists (use --force to overwrite)") from None
        except OSError as exc:
            raise CliError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def _write_file(target: Path, data: bytes, *, force: bool) -> None:
    """Temp file (0600) in the target's directory, fsync, then ``os.link`` (exclusive) or ``os.replace``."""
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _read_input(args: argparse.Namespace) -> bytes | None:
    """The ``--in`` file's bytes, or ``None`` when the data comes from stdin (read after the secrets)."""
    if args.input == "-":
        return None
    path = Path(args.input).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", _prog(args)) from None


def _secrets_and_data(args: argparse.Namespace) -> tuple[str, str, bytes]:
    """Input file first (so a missing file is reported before the prompt), then the secrets, then stdin data."""
    data = _read_input(args)
    words, passphrase = read_mnemonic(passphrase=bool(args.passphrase), prog=_prog(args))
    if data is None:
        data = read_stdin_rest()
    return words, passphrase, data


def _aes_key(seed: bytearray, key_version: int) -> bytes:
    return derive_aes_key_from_seed(seed, encryption_path(key_version)).private_key


# --------------------------------------------------------------------------------------------- commands


def run_mnemonic_new(args: argparse.Namespace, ctx: Context) -> int:
    words = generate_mnemonic(int(args.words))
    ctx.out(words)
    ctx.warn(MNEMONIC_WARNING)
    return 0


@dataclass(frozen=True)
class _Plan:
    """What ``secret derive`` computes: ``kind`` is ed25519, secp256k1, password or encryption."""

    kind: str
    path: str
    comment: str = ""
    length: int = DEFAULT_PASSWORD_LENGTH
    key_version: int = CURRENT_KEY_VERSION


def _derive_plan(args: argparse.Namespace) -> _Plan:
    """Check the flag combination (exit 2, before any secret is read) and say what to derive."""
    prog = _prog(args)
    purpose: str | None = args.purpose
    if args.device is not None and purpose != "device":
        raise UsageError("--device is only valid with --purpose device", prog)
    if (args.site is not None or args.length is not None) and purpose != "password":
        raise UsageError("--site and --length are only valid with --purpose password", prog)
    if args.key_version is not None and purpose != "encryption":
        raise UsageError("--key-version is only valid with --purpose encryption", prog)
    if args.curve is not None and args.path is None:
        raise UsageError("--curve is only valid with --path", prog)
    if args.path is not None:
        try:
            if args.curve == "secp256k1":
                return _Plan("secp256k1", check_ethereum_path(args.path))
            return _Plan("ed25519", check_ed25519_path(args.path))
        except InvalidPathError as exc:
            raise UsageError(f"--path: {exc}", prog) from None
    if purpose == "password":
        if args.site is None:
            raise UsageError("--purpose password needs --site S", prog)
        length = DEFAULT_PASSWORD_LENGTH if args.length is None else int(args.length)
        if not MIN_PASSWORD_LENGTH <= length <= MAX_PASSWORD_LENGTH:
            raise UsageError(
                f"--length must be in {MIN_PASSWORD_LENGTH} .. {MAX_PASSWORD_LENGTH}, got {length}", prog
            )
        try:
            path = site_password_path(args.site)
        except ValueError as exc:
            raise UsageError(f"--site: {exc}", prog) from None
        return _Plan("password", path, length=length)
    if purpose == "encryption":
        version = CURRENT_KEY_VERSION if args.key_version is None else int(args.key_version)
        version = _key_version(version, "--key-version", prog)
        return _Plan("encryption", encryption_path(version), key_version=version)
    if purpose == "device":
        if args.device is None:
            raise UsageError("--purpose device needs --device N (N >= 1)", prog)
        if not 1 <= args.device <= _MAX_DEVICE:
            raise UsageError(f"--device must be in 1 .. {_MAX_DEVICE}", prog)
    role = str(purpose)
    return _Plan("ed25519", role_path(role, args.device), comment=role_comment(role, args.device))


def run_derive(args: argparse.Namespace, ctx: Context) -> int:
    plan = _derive_plan(args)
    words, passphrase = read_mnemonic(passphrase=bool(args.passphrase), prog=_prog(args))
    with _seed(words, passphrase) as seed:
        if plan.kind == "password":
            private = slip10_private_key(seed, parse_path(plan.path), "ed25519")
            ctx.out(password_from_key(private, plan.length))
            return 0
        if plan.kind == "ed25519":
            key = derive_ed25519_from_seed(seed, plan.path)
            ctx.out(ed25519_public_openssh(key.public_key, plan.comment))
            sys.stderr.write(
                f"fingerprint={openssh_fingerprint(key.public_key)} endpoint_id={endpoint_id(key.public_key)}\n"
            )
        elif plan.kind == "secp256k1":
            key = derive_secp256k1_from_seed(seed, plan.path)
            ctx.out(key.public_key.hex())
        else:
            key = derive_aes_key_from_seed(seed, plan.path)
            ctx.out(f"key_version={plan.key_version} check={key_check_value(key.private_key)}")
    if args.private:
        ctx.out(key.private_key.hex())
    return 0


def run_encrypt(args: argparse.Namespace, ctx: Context) -> int:
    prog = _prog(args)
    version = _key_version(int(args.key_version), "--key-version", prog)
    aad = _aad(args)
    out = _Output(args.output, force=bool(args.force), prog=prog)
    words, passphrase, plaintext = _secrets_and_data(args)
    with _seed(words, passphrase) as seed:
        key = _aes_key(seed, version)
    blob = encrypt_with_key(key, plaintext, version, aad)
    out.write((blob.to_json() + "\n").encode("ascii"))
    return 0


def _open_blob(seed: bytearray, raw: bytes, aad: bytes | None) -> bytes:
    """Decrypt the JSON blob ``raw`` with the key of its own version; every failure is one generic error."""
    try:
        blob = EncryptedData.from_json(raw)
        return decrypt_with_key(_aes_key(seed, blob_key_version(blob)), blob, aad)
    except DecryptionError:
        raise CliError(DECRYPTION_FAILED) from None


def run_decrypt(args: argparse.Namespace, ctx: Context) -> int:
    aad = _aad(args)
    out = _Output(args.output, force=bool(args.force), prog=_prog(args))
    words, passphrase, raw = _secrets_and_data(args)
    with _seed(words, passphrase) as seed:
        plaintext = _open_blob(seed, raw, aad)
    out.write(plaintext)
    return 0


def run_rotate(args: argparse.Namespace, ctx: Context) -> int:
    prog = _prog(args)
    version = _key_version(int(args.to_version), "--to-version", prog)
    aad = _aad(args)
    out = _Output(args.output, force=bool(args.force), prog=prog)
    words, passphrase, raw = _secrets_and_data(args)
    with _seed(words, passphrase) as seed:
        plaintext = _open_blob(seed, raw, aad)
        key = _aes_key(seed, version)
    blob = encrypt_with_key(key, plaintext, version, aad)
    out.write((blob.to_json() + "\n").encode("ascii"))
    return 0
