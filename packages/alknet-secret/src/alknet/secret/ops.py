"""The ``/secrets/*`` call-protocol operations (secret.md §9) over a ``SecretService``.

``register_secret_operations(registry, service)`` registers every operation of the §9 table with its input
and output JSON Schemas and its scopes. Errors reach the caller as ``CallError``: a ``SecretError`` keeps its
code and ``retryable`` flag (``LOCKED`` is not retryable), every decryption failure is ``INVALID_INPUT``
``"decryption failed"`` with no details, range errors are ``INVALID_INPUT``, and anything unexpected is
``INTERNAL`` with the fixed message (only the exception's type name is logged, never its text).

The handlers never log inputs or outputs and never put them in error ``details``. Bytes travel as standard
padded base64; ``plaintext`` and ``aad`` are UTF-8 strings on the wire.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from alknet.core.call.envelope import INTERNAL_MESSAGE, CallError, ErrorCode
from alknet.core.call.registry import (
    AccessControl,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
)
from alknet.core.logfmt import log_event
from alknet.secret.crypto import MAX_KEY_VERSION, MIN_KEY_VERSION, EncryptedData
from alknet.secret.derive import DerivedKey
from alknet.secret.errors import DecryptionError, LockedError, SecretError
from alknet.secret.openssh import ed25519_public_openssh, endpoint_id, openssh_fingerprint
from alknet.secret.password import DEFAULT_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from alknet.secret.paths import ETHEREUM_PATH, IDENTITY_PATH, check_password_path, site_password_path
from alknet.secret.service import SecretService

__all__ = [
    "NAMESPACE",
    "SCOPE_ADMIN",
    "SCOPE_DECRYPT",
    "SCOPE_DERIVE",
    "SCOPE_ENCRYPT",
    "SCOPE_PUBLIC",
    "register_secret_operations",
    "secret_operation_specs",
]

NAMESPACE: Final = "secrets"
SCOPE_ADMIN: Final = "secrets:admin"
SCOPE_DERIVE: Final = "secrets:derive"
SCOPE_PUBLIC: Final = "secrets:public"
SCOPE_ENCRYPT: Final = "secrets:encrypt"
SCOPE_DECRYPT: Final = "secrets:decrypt"

_log = logging.getLogger("alknet.secret")

_Json = dict[str, Any]
_Impl = Callable[[SecretService, _Json], Awaitable[_Json]]

# -- schemas -------------------------------------------------------------------------------------------------

_STR: Final[_Json] = {"type": "string"}
_B64: Final[_Json] = {"type": "string", "contentEncoding": "base64"}
_KEY_VERSION: Final[_Json] = {"type": "integer", "minimum": MIN_KEY_VERSION, "maximum": MAX_KEY_VERSION}
# Blobs are checked by the handler, not the schema, so that any malformed or tampered blob gets the one
# generic "decryption failed" answer.
_BLOB_IN: Final[_Json] = {"type": "object", "description": "EncryptedData: {key_version, salt, iv, data}"}
_BLOB_OUT: Final[_Json] = {
    "type": "object",
    "properties": {"key_version": _KEY_VERSION, "salt": _B64, "iv": _B64, "data": _B64},
    "required": ["key_version", "salt", "iv", "data"],
    "additionalProperties": False,
}


def _obj(properties: Mapping[str, _Json] | None = None, required: tuple[str, ...] = ()) -> _Json:
    out: _Json = {"type": "object", "properties": dict(properties or {}), "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def _key_out(key_type: str) -> _Json:
    return _obj(
        {"key_type": {"const": key_type}, "path": _STR, "private_key": _B64, "public_key": _B64},
        ("key_type", "path", "private_key", "public_key"),
    )


# ``/secrets/status`` and ``/secrets/lock`` take no arguments: ``{}``, or a null / absent input.
_NO_INPUT: Final[_Json] = {"type": ["object", "null"], "properties": {}, "additionalProperties": False}
_STATUS_OUT = _obj(
    {"locked": {"type": "boolean"}, "current_key_version": _KEY_VERSION}, ("locked", "current_key_version")
)
_UNLOCK_IN = _obj({"mnemonic": _STR, "passphrase": _STR, "expected_identity": _STR}, ("mnemonic",))
_UNLOCK_OUT = _obj({"fingerprint": _STR, "endpoint_id": _STR}, ("fingerprint", "endpoint_id"))
_PATH_IN = _obj({"path": _STR}, ("path",))
_PUBLIC_OUT = _obj(
    {
        "key_type": {"const": "ed25519"},
        "path": _STR,
        "public_key": _B64,
        "openssh": _STR,
        "fingerprint": _STR,
        "endpoint_id": _STR,
    },
    ("key_type", "path", "public_key", "openssh", "fingerprint", "endpoint_id"),
)
_ENC_KEY_IN = _obj({"path": _STR, "key_version": _KEY_VERSION})
_ETH_IN = _obj({"path": _STR})
_LENGTH: Final[_Json] = {
    "type": "integer",
    "minimum": MIN_PASSWORD_LENGTH,
    "maximum": MAX_PASSWORD_LENGTH,
    "default": DEFAULT_PASSWORD_LENGTH,
}
_PASSWORD_IN = _obj({"site": _STR, "path": _STR, "length": _LENGTH})
_PASSWORD_OUT = _obj({"password": _STR, "path": _STR}, ("password", "path"))
_ENCRYPT_IN = _obj({"plaintext": _STR, "key_version": _KEY_VERSION, "aad": _STR}, ("plaintext",))
_DECRYPT_IN = _obj(
    {"encrypted": _BLOB_IN, "aad": _STR, "encoding": {"enum": ["utf8", "base64"], "default": "utf8"}},
    ("encrypted",),
)
_DECRYPT_OUT = _obj({"plaintext": _STR}, ("plaintext",))
_ROTATE_IN = _obj({"encrypted": _BLOB_IN, "to_version": _KEY_VERSION, "aad": _STR}, ("encrypted",))

# -- helpers -------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _aad(input: _Json) -> bytes | None:
    aad = input.get("aad")
    return None if aad is None else str(aad).encode("utf-8")


def _one_of(input: _Json, first: str, second: str) -> None:
    if (first in input) == (second in input):
        raise ValueError(f"give exactly one of {first} or {second}")


def _key_json(key: DerivedKey) -> _Json:
    return key.to_json(include_private=True)


# -- operations ----------------------------------------------------------------------------------------------


async def _status(service: SecretService, input: _Json) -> _Json:
    return {"locked": service.locked, "current_key_version": service.current_key_version}


async def _unlock(service: SecretService, input: _Json) -> _Json:
    fingerprint = await service.unlock(
        input["mnemonic"], input.get("passphrase", ""), expected_identity=input.get("expected_identity")
    )
    identity = await service.derive_ed25519(IDENTITY_PATH)
    return {"fingerprint": fingerprint, "endpoint_id": endpoint_id(identity.public_key)}


async def _lock(service: SecretService, input: _Json) -> _Json:
    await service.lock()
    return {}


async def _public_key(service: SecretService, input: _Json) -> _Json:
    key = await service.derive_ed25519(input["path"])
    public = key.public_key
    return {
        "key_type": str(key.key_type),
        "path": key.path,
        "public_key": _b64(public),
        "openssh": ed25519_public_openssh(public),
        "fingerprint": openssh_fingerprint(public),
        "endpoint_id": endpoint_id(public),
    }


async def _derive_ed25519(service: SecretService, input: _Json) -> _Json:
    return _key_json(await service.derive_ed25519(input["path"]))


async def _derive_encryption_key(service: SecretService, input: _Json) -> _Json:
    if service.locked:  # LOCKED before argument errors, as for every other operation
        raise LockedError()
    _one_of(input, "path", "key_version")
    key = await service.derive_encryption_key(input.get("path"), key_version=input.get("key_version"))
    return _key_json(key)


async def _derive_ethereum_key(service: SecretService, input: _Json) -> _Json:
    return _key_json(await service.derive_ethereum_key(input.get("path", ETHEREUM_PATH)))


async def _derive_password(service: SecretService, input: _Json) -> _Json:
    if service.locked:
        raise LockedError()
    _one_of(input, "site", "path")
    length = input.get("length", DEFAULT_PASSWORD_LENGTH)
    if "site" in input:
        path = site_password_path(input["site"])
        password = await service.derive_site_password(input["site"], length)
    else:
        password = await service.derive_password(input["path"], length)
        path = check_password_path(input["path"])
    return {"password": password, "path": path}


async def _encrypt(service: SecretService, input: _Json) -> _Json:
    blob = await service.encrypt(input["plaintext"], input.get("key_version"), aad=_aad(input))
    return blob.to_dict()


async def _decrypt(service: SecretService, input: _Json) -> _Json:
    data = await service.decrypt(input["encrypted"], aad=_aad(input))
    if input.get("encoding", "utf8") == "base64":
        return {"plaintext": _b64(data)}
    try:
        return {"plaintext": data.decode("utf-8")}
    except UnicodeDecodeError:
        raise ValueError('plaintext is not valid UTF-8; ask with encoding "base64"') from None


async def _rotate(service: SecretService, input: _Json) -> _Json:
    blob: EncryptedData = await service.rotate(input["encrypted"], input.get("to_version"), aad=_aad(input))
    return blob.to_dict()


# -- registration --------------------------------------------------------------------------------------------

_ALL_SCOPES: Final = (SCOPE_ADMIN, SCOPE_DERIVE, SCOPE_PUBLIC, SCOPE_ENCRYPT, SCOPE_DECRYPT)
_Q, _M = OperationType.QUERY, OperationType.MUTATION
_UNLOCK: Final = "unlock"

# (op, type, access control, input schema, output schema, implementation, description)
_TABLE: Final[tuple[tuple[str, OperationType, AccessControl, _Json, _Json, _Impl, str], ...]] = (
    (
        "status",
        _Q,
        AccessControl(required_scopes_any=_ALL_SCOPES),
        _NO_INPUT,
        _STATUS_OUT,
        _status,
        "whether the service is locked, and the current key version",
    ),
    (
        _UNLOCK,
        _M,
        AccessControl((SCOPE_ADMIN,)),
        _UNLOCK_IN,
        _UNLOCK_OUT,
        _unlock,
        "unlock with the seed words (registered only with allow_remote_unlock)",
    ),
    (
        "lock",
        _M,
        AccessControl((SCOPE_ADMIN,)),
        _NO_INPUT,
        _obj(),
        _lock,
        "zero the seed and every cached key",
    ),
    (
        "publicKey",
        _Q,
        AccessControl(required_scopes_any=(SCOPE_PUBLIC, SCOPE_DERIVE)),
        _PATH_IN,
        _PUBLIC_OUT,
        _public_key,
        "public key, OpenSSH line, fingerprint and endpoint id of an ed25519 key under m/74'/0'",
    ),
    (
        "deriveEd25519",
        _Q,
        AccessControl((SCOPE_DERIVE,)),
        _PATH_IN,
        _key_out("ed25519"),
        _derive_ed25519,
        "ed25519 key pair under m/74'/0'",
    ),
    (
        "deriveEncryptionKey",
        _Q,
        AccessControl((SCOPE_DERIVE,)),
        _ENC_KEY_IN,
        _key_out("aes256gcm"),
        _derive_encryption_key,
        "AES-256 key by path m/74'/2'/0'/{i}' or by key_version (exactly one)",
    ),
    (
        "deriveEthereumKey",
        _Q,
        AccessControl((SCOPE_DERIVE,)),
        _ETH_IN,
        _key_out("secp256k1"),
        _derive_ethereum_key,
        "secp256k1 key under m/44'/60' (default m/44'/60'/0'/0/0)",
    ),
    (
        "derivePassword",
        _Q,
        AccessControl((SCOPE_DERIVE,)),
        _PASSWORD_IN,
        _PASSWORD_OUT,
        _derive_password,
        "password for a site or a path under m/74'/1'/0' (exactly one), length 8..1024",
    ),
    (
        "encrypt",
        _M,
        AccessControl((SCOPE_ENCRYPT,)),
        _ENCRYPT_IN,
        _BLOB_OUT,
        _encrypt,
        "AES-256-GCM blob of a UTF-8 plaintext",
    ),
    (
        "decrypt",
        _Q,
        AccessControl((SCOPE_DECRYPT,)),
        _DECRYPT_IN,
        _DECRYPT_OUT,
        _decrypt,
        "plaintext of a blob, as UTF-8 text or base64",
    ),
    (
        "rotate",
        _M,
        AccessControl((SCOPE_DECRYPT, SCOPE_ENCRYPT)),
        _ROTATE_IN,
        _BLOB_OUT,
        _rotate,
        "re-encrypt a blob under another key version",
    ),
)


def _handler(
    name: str, impl: _Impl, service: SecretService
) -> Callable[[Any, OperationContext], Awaitable[_Json]]:
    """Wrap ``impl`` so every failure becomes a ``CallError`` that carries no input, output or secret."""

    async def handler(input: Any, ctx: OperationContext) -> _Json:
        try:
            return await impl(service, {} if input is None else dict(input))
        except CallError:
            raise
        except DecryptionError:
            raise CallError(ErrorCode.INVALID_INPUT, "decryption failed", False) from None
        except SecretError as exc:
            raise CallError(exc.code, str(exc), exc.retryable) from None
        except UnicodeError:
            raise CallError(ErrorCode.INVALID_INPUT, "text is not valid Unicode", False) from None
        except ValueError as exc:
            raise CallError(ErrorCode.INVALID_INPUT, str(exc)[:200], False) from None
        except Exception as exc:
            log_event(
                _log,
                logging.ERROR,
                "secrets operation failed",
                op=name,
                request_id=ctx.request_id,
                error=type(exc).__name__,
            )
            raise CallError(ErrorCode.INTERNAL, INTERNAL_MESSAGE, False) from None

    handler.__name__ = handler.__qualname__ = name.rsplit("/", 1)[-1]
    return handler


def secret_operation_specs(*, allow_remote_unlock: bool = False) -> list[OperationSpec]:
    """The ``OperationSpec``s ``register_secret_operations`` registers (without handlers)."""
    return [
        OperationSpec(f"/{NAMESPACE}/{op}", NAMESPACE, op_type, inp, out, ac, desc)
        for op, op_type, ac, inp, out, _, desc in _TABLE
        if op != _UNLOCK or allow_remote_unlock
    ]


def register_secret_operations(
    registry: OperationRegistry, service: SecretService, *, allow_remote_unlock: bool = False
) -> None:
    """Register the ``/secrets/*`` operations of secret.md §9 on ``registry``, served by ``service``.

    ``/secrets/unlock`` is registered only when ``allow_remote_unlock`` is true; by default the words are
    entered through the local API. Raises ``ValueError`` if one of the names is already registered.
    """
    impls = {f"/{NAMESPACE}/{op}": impl for op, _, _, _, _, impl, _ in _TABLE}
    specs = secret_operation_specs(allow_remote_unlock=allow_remote_unlock)
    taken = [spec.name for spec in specs if spec.name in registry]
    if taken:
        raise ValueError(f"{taken[0]} is already registered")
    for spec in specs:
        registry.register(spec, _handler(spec.name, impls[spec.name], service))
