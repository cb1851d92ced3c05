"""The ``/secrets/*`` operations (secret.md §8, §9, §12) end to end: a real ``CallPeer`` pair over a socket
pair, the server end served by a ``Node`` whose registry holds the operations (``validate_output=True``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from alknet.core.auth.identity import Identity
from alknet.core.call import CallError, OperationRegistry
from alknet.core.call.peer import CallPeer, ChannelStream
from alknet.core.node import Node
from alknet.secret import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    SecretService,
    register_secret_operations,
    secret_operation_specs,
)
from alknet.secret import crypto as crypto_module

from .known import (
    ABANDON,
    AES_V2,
    ETH_PRIVATE,
    ETH_PUBLIC,
    HOST_LINE,
    HOST_PUBLIC,
    IDENTITY_FINGERPRINT,
    IDENTITY_LINE,
    IDENTITY_PRIVATE,
    IDENTITY_PUBLIC,
    KNOWN_BLOB,
    PATH0_PASSWORD_20,
    SEED_EMPTY,
    SEED_TREZOR,
    SITE_PASSWORD_32,
)

pytestmark = pytest.mark.timeout(60)

ALL = ("secrets:admin", "secrets:derive", "secrets:public", "secrets:encrypt", "secrets:decrypt")
FULL = Identity("SHA256:full", ("/secrets/*", *ALL))
SERVER_SIDE = Identity("SHA256:server", ("*",))
PLAINTEXT = "plaintext-marker-5d1e é"
AAD = "aad-marker-c03b"
ENDPOINT_ID = IDENTITY_PUBLIC


def b64(hex_value: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_value)).decode()


@dataclass
class Rig:
    service: SecretService
    node: Node
    peers: list[CallPeer]

    async def client(self, identity: Identity = FULL, codec: str = "json") -> CallPeer:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        server = CallPeer(ChannelStream(ra, wa, codec), node=self.node, identity=identity)
        client = CallPeer(ChannelStream(rb, wb, codec), identity=SERVER_SIDE)
        server.start()
        client.start()
        self.peers += [server, client]
        return client

    async def close(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.close()
        await self.service.lock()


async def make_rig(*, unlocked: bool = True, allow_remote_unlock: bool = False) -> Rig:
    service = SecretService()
    if unlocked:
        await service.unlock(ABANDON)
    registry = OperationRegistry(validate_output=True)
    register_secret_operations(registry, service, allow_remote_unlock=allow_remote_unlock)
    return Rig(service, Node("dev1", registry), [])


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await make_rig()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def locked_rig() -> AsyncIterator[Rig]:
    r = await make_rig(unlocked=False, allow_remote_unlock=True)
    try:
        yield r
    finally:
        await r.close()


async def call_error(peer: CallPeer, op: str, input: Any) -> CallError:
    with pytest.raises(CallError) as info:
        await peer.call(op, input, timeout=10)
    return info.value


# One valid input per key/crypto operation (the operations that answer LOCKED while locked).
LOCKED_OPS: dict[str, Any] = {
    "/secrets/publicKey": {"path": IDENTITY_PATH},
    "/secrets/deriveEd25519": {"path": IDENTITY_PATH},
    "/secrets/deriveEncryptionKey": {"key_version": 2},
    "/secrets/deriveEthereumKey": {},
    "/secrets/derivePassword": {"site": "example.com"},
    "/secrets/encrypt": {"plaintext": PLAINTEXT},
    "/secrets/decrypt": {"encrypted": KNOWN_BLOB},
    "/secrets/rotate": {"encrypted": KNOWN_BLOB},
}


# ------------------------------------------------------------------------------------------ registration


def test_specs_paths_types_and_scopes() -> None:
    specs = {s.name: s for s in secret_operation_specs(allow_remote_unlock=True)}
    assert sorted(specs) == sorted(
        [
            "/secrets/status",
            "/secrets/unlock",
            "/secrets/lock",
            "/secrets/publicKey",
            "/secrets/deriveEd25519",
            "/secrets/deriveEncryptionKey",
            "/secrets/deriveEthereumKey",
            "/secrets/derivePassword",
            "/secrets/encrypt",
            "/secrets/decrypt",
            "/secrets/rotate",
        ]
    )
    mutations = {"/secrets/unlock", "/secrets/lock", "/secrets/encrypt", "/secrets/rotate"}
    for name, spec in specs.items():
        assert spec.namespace == "secrets"
        assert spec.op_type.value == ("mutation" if name in mutations else "query")
        assert spec.input_schema["additionalProperties"] is False
    ac = {name: spec.access_control for name, spec in specs.items()}
    assert set(ac["/secrets/status"].required_scopes_any) == set(ALL)
    assert set(ac["/secrets/publicKey"].required_scopes_any) == {"secrets:public", "secrets:derive"}
    assert ac["/secrets/unlock"].required_scopes == ("secrets:admin",)
    assert ac["/secrets/lock"].required_scopes == ("secrets:admin",)
    assert set(ac["/secrets/rotate"].required_scopes) == {"secrets:decrypt", "secrets:encrypt"}
    assert ac["/secrets/decrypt"].required_scopes == ("secrets:decrypt",)
    assert ac["/secrets/encrypt"].required_scopes == ("secrets:encrypt",)
    for op in ("deriveEd25519", "deriveEncryptionKey", "deriveEthereumKey", "derivePassword"):
        assert ac[f"/secrets/{op}"].required_scopes == ("secrets:derive",)
    assert "/secrets/unlock" not in {s.name for s in secret_operation_specs()}


def test_register_twice_refuses_without_partial_registration() -> None:
    registry = OperationRegistry()
    service = SecretService()
    register_secret_operations(registry, service)
    before = len(registry)
    with pytest.raises(ValueError, match="already registered"):
        register_secret_operations(registry, service, allow_remote_unlock=True)
    assert len(registry) == before and "/secrets/unlock" not in registry


# ------------------------------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_known_answers(rig: Rig, codec: str) -> None:
    peer = await rig.client(codec=codec)
    assert await peer.call("/secrets/status", {}, timeout=10) == {"locked": False, "current_key_version": 2}
    public = await peer.call("/secrets/publicKey", {"path": "m/74'/0'/0'/0'"}, timeout=10)
    assert public == {
        "key_type": "ed25519",
        "path": "m/74'/0'/0'/0'",
        "public_key": b64(IDENTITY_PUBLIC),
        "openssh": IDENTITY_LINE,
        "fingerprint": IDENTITY_FINGERPRINT,
        "endpoint_id": ENDPOINT_ID,
    }
    host = await peer.call("/secrets/publicKey", {"path": "m/74h/0h/1h/0h"}, timeout=10)
    assert host["openssh"] == HOST_LINE and host["path"] == "m/74'/0'/1'/0'"
    assert host["public_key"] == b64(HOST_PUBLIC)
    assert await peer.call("/secrets/deriveEd25519", {"path": IDENTITY_PATH}, timeout=10) == {
        "key_type": "ed25519",
        "path": IDENTITY_PATH,
        "private_key": b64(IDENTITY_PRIVATE),
        "public_key": b64(IDENTITY_PUBLIC),
    }
    aes = {"key_type": "aes256gcm", "path": "m/74'/2'/0'/0'", "private_key": b64(AES_V2), "public_key": ""}
    assert await peer.call("/secrets/deriveEncryptionKey", {"key_version": 2}, timeout=10) == aes
    assert await peer.call("/secrets/deriveEncryptionKey", {"path": "m/74'/2'/0'/0'"}, timeout=10) == aes
    eth = {"key_type": "secp256k1", "path": ETHEREUM_PATH, "private_key": b64(ETH_PRIVATE)}
    assert await peer.call("/secrets/deriveEthereumKey", {}, timeout=10) == {
        **eth,
        "public_key": b64(ETH_PUBLIC),
    }
    got = await peer.call("/secrets/deriveEthereumKey", {"path": ETHEREUM_PATH}, timeout=10)
    assert got["private_key"] == b64(ETH_PRIVATE)
    assert await peer.call("/secrets/derivePassword", {"site": "example.com"}, timeout=10) == {
        "password": SITE_PASSWORD_32,
        "path": "m/74'/1'/0'/595175158'",
    }
    assert await peer.call(
        "/secrets/derivePassword", {"path": "m/74h/1h/0h/0h", "length": 20}, timeout=10
    ) == {
        "password": PATH0_PASSWORD_20,
        "path": "m/74'/1'/0'/0'",
    }
    assert await peer.call("/secrets/decrypt", {"encrypted": KNOWN_BLOB}, timeout=10) == {
        "plaintext": "alknet"
    }
    as_b64 = await peer.call("/secrets/decrypt", {"encrypted": KNOWN_BLOB, "encoding": "base64"}, timeout=10)
    assert as_b64 == {"plaintext": base64.b64encode(b"alknet").decode()}


async def test_encrypt_decrypt_rotate_round_trip(rig: Rig) -> None:
    peer = await rig.client()
    blob = await peer.call("/secrets/encrypt", {"plaintext": PLAINTEXT, "aad": AAD}, timeout=10)
    assert set(blob) == {"key_version", "salt", "iv", "data"} and blob["key_version"] == 2
    assert await rig.service.decrypt_text(blob, aad=AAD.encode()) == PLAINTEXT  # same as the local API
    out = await peer.call("/secrets/decrypt", {"encrypted": blob, "aad": AAD}, timeout=10)
    assert out == {"plaintext": PLAINTEXT}
    v3 = await peer.call("/secrets/encrypt", {"plaintext": PLAINTEXT, "key_version": 3}, timeout=10)
    assert v3["key_version"] == 3
    rotated = await peer.call("/secrets/rotate", {"encrypted": blob, "to_version": 3, "aad": AAD}, timeout=10)
    assert rotated["key_version"] == 3 and rotated["data"] != blob["data"]
    back = await peer.call("/secrets/rotate", {"encrypted": rotated, "aad": AAD}, timeout=10)
    assert back["key_version"] == 2
    assert await peer.call("/secrets/decrypt", {"encrypted": back, "aad": AAD}, timeout=10) == out


async def test_json_and_msgpack_outputs_are_identical(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto_module, "_randbytes", lambda n: bytes(n))
    outputs = []
    for codec in ("json", "msgpack"):
        peer = await rig.client(codec=codec)
        results = [await peer.call(op, input, timeout=10) for op, input in LOCKED_OPS.items()]
        results.append(await peer.call("/secrets/status", {}, timeout=10))
        outputs.append(results)
    assert outputs[0] == outputs[1]
    assert outputs[0][5]["iv"] == "AAAAAAAAAAAAAAAA"  # deterministic IV: the blobs compare too


async def test_remote_unlock_and_lock(locked_rig: Rig) -> None:
    peer = await locked_rig.client()
    assert await peer.call("/secrets/status", {}, timeout=10) == {"locked": True, "current_key_version": 2}
    out = await peer.call(
        "/secrets/unlock", {"mnemonic": ABANDON, "expected_identity": ENDPOINT_ID}, timeout=10
    )
    assert out == {"fingerprint": IDENTITY_FINGERPRINT, "endpoint_id": ENDPOINT_ID}
    assert not locked_rig.service.locked
    err = await call_error(peer, "/secrets/unlock", {"mnemonic": ABANDON})
    assert (err.code, err.retryable) == ("CONFLICT", False)
    assert await peer.call("/secrets/lock", {}, timeout=10) == {}
    assert locked_rig.service.locked
    assert await peer.call("/secrets/lock", {}, timeout=10) == {}
    err = await call_error(
        peer,
        "/secrets/unlock",
        {"mnemonic": ABANDON, "passphrase": "TREZOR", "expected_identity": IDENTITY_FINGERPRINT},
    )
    assert err.code == "INVALID_INPUT" and err.details is None and locked_rig.service.locked
    err = await call_error(peer, "/secrets/unlock", {"mnemonic": "abandon " * 12})
    assert err.code == "INVALID_INPUT" and "abandon" not in err.message and locked_rig.service.locked
    err = await call_error(peer, "/secrets/unlock", {"mnemonic": ABANDON, "expected_identity": "nope"})
    assert err.code == "INVALID_INPUT" and locked_rig.service.locked


# ------------------------------------------------------------------------------------------ errors


async def test_locked_service_answers_locked_for_every_key_op(locked_rig: Rig) -> None:
    peer = await locked_rig.client()
    for op, input in LOCKED_OPS.items():
        err = await call_error(peer, op, input)
        assert (err.code, err.retryable, err.details) == ("LOCKED", False, None), op
    # argument errors do not hide the state: exactly-one violations still answer LOCKED
    for op, input in (
        ("/secrets/deriveEncryptionKey", {}),
        ("/secrets/derivePassword", {"site": "a", "path": "m/74'/1'/0'/0'"}),
    ):
        assert (await call_error(peer, op, input)).code == "LOCKED"
    assert await peer.call("/secrets/status", {}, timeout=10) == {"locked": True, "current_key_version": 2}
    assert await peer.call("/secrets/lock", {}, timeout=10) == {}


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_status_and_lock_take_null_absent_or_empty_input(locked_rig: Rig, codec: str) -> None:
    """secret.md §9 lists their input as ``{}``; a null (or omitted) input means the same."""
    peer = await locked_rig.client(codec=codec)
    locked = {"locked": True, "current_key_version": 2}
    assert await peer.call("/secrets/status", None, timeout=10) == locked
    assert await peer.call("/secrets/status", timeout=10) == locked
    assert await peer.call("/secrets/status", {}, timeout=10) == locked
    await locked_rig.service.unlock(ABANDON)
    assert (await peer.call("/secrets/status", timeout=10))["locked"] is False
    assert await peer.call("/secrets/lock", None, timeout=10) == {}
    assert locked_rig.service.locked
    await locked_rig.service.unlock(ABANDON)
    assert await peer.call("/secrets/lock", timeout=10) == {}
    assert locked_rig.service.locked
    assert await peer.call("/secrets/lock", {}, timeout=10) == {}
    for spec in secret_operation_specs():
        if spec.name in ("/secrets/status", "/secrets/lock"):
            assert spec.input_schema["type"] == ["object", "null"], spec.name


async def test_unlock_absent_by_default(rig: Rig) -> None:
    peer = await rig.client()
    listed = [o["name"] for o in (await peer.call("/services/list", {}, timeout=10))["operations"]]
    assert "/secrets/status" in listed and "/secrets/unlock" not in listed
    assert (await call_error(peer, "/secrets/unlock", {"mnemonic": ABANDON})).code == "NOT_FOUND"
    remote = await make_rig(unlocked=False, allow_remote_unlock=True)
    try:
        rpeer = await remote.client()
        listed = [o["name"] for o in (await rpeer.call("/services/list", {}, timeout=10))["operations"]]
        assert "/secrets/unlock" in listed
        no_admin = await remote.client(Identity("SHA256:x", ("/secrets/*", "secrets:derive")))
        assert (await call_error(no_admin, "/secrets/unlock", {"mnemonic": ABANDON})).code == "FORBIDDEN"
        assert (await call_error(no_admin, "/secrets/lock", {})).code == "FORBIDDEN"
        assert remote.service.locked
    finally:
        await remote.close()


FORBIDDEN_CASES = [
    (("secrets:public",), "/secrets/deriveEd25519", {"path": IDENTITY_PATH}),
    (("secrets:public",), "/secrets/deriveEncryptionKey", {"key_version": 2}),
    (("secrets:public",), "/secrets/deriveEthereumKey", {}),
    (("secrets:public",), "/secrets/derivePassword", {"site": "example.com"}),
    (("secrets:derive",), "/secrets/encrypt", {"plaintext": "x"}),
    (("secrets:encrypt",), "/secrets/decrypt", {"encrypted": KNOWN_BLOB}),
    (("secrets:decrypt",), "/secrets/rotate", {"encrypted": KNOWN_BLOB}),
    (("secrets:encrypt",), "/secrets/rotate", {"encrypted": KNOWN_BLOB}),
    (("secrets:encrypt",), "/secrets/lock", {}),
    (("secrets:encrypt",), "/secrets/publicKey", {"path": IDENTITY_PATH}),
    (("other:scope",), "/secrets/status", {}),
    (ALL, "/secrets/status", {}),  # scopes without the path grant
]


@pytest.mark.parametrize(("scopes", "op", "input"), FORBIDDEN_CASES)
async def test_missing_scope_is_forbidden(rig: Rig, scopes: tuple[str, ...], op: str, input: Any) -> None:
    grant = () if scopes is ALL else ("/secrets/*",)
    peer = await rig.client(Identity("SHA256:limited", (*grant, *scopes)))
    err = await call_error(peer, op, input)
    assert err.code == "FORBIDDEN", op
    assert not rig.service.locked


async def test_public_scope_alone_reads_public_keys(rig: Rig) -> None:
    peer = await rig.client(Identity("SHA256:pub", ("/secrets/*", "secrets:public")))
    out = await peer.call("/secrets/publicKey", {"path": "m/74'/0'/0'/0'"}, timeout=10)
    assert out["openssh"] == IDENTITY_LINE
    assert (await peer.call("/secrets/status", {}, timeout=10))["locked"] is False


SCHEMA_INVALID = [
    ("/secrets/status", {"x": 1}),
    ("/secrets/status", []),
    ("/secrets/status", "now"),
    ("/secrets/lock", {"now": True}),
    ("/secrets/lock", 0),
    ("/secrets/publicKey", {}),
    ("/secrets/publicKey", {"path": 3}),
    ("/secrets/deriveEd25519", {"path": IDENTITY_PATH, "extra": 1}),
    ("/secrets/deriveEncryptionKey", {"key_version": 1}),
    ("/secrets/deriveEncryptionKey", {"key_version": "2"}),
    ("/secrets/deriveEthereumKey", {"path": None}),
    ("/secrets/derivePassword", {"site": "example.com", "length": 7}),
    ("/secrets/derivePassword", {"site": "example.com", "length": 1025}),
    ("/secrets/encrypt", {}),
    ("/secrets/encrypt", {"plaintext": "x", "aad": 5}),
    ("/secrets/decrypt", {"encrypted": KNOWN_BLOB, "encoding": "hex"}),
    ("/secrets/decrypt", {"encrypted": "not an object"}),
    ("/secrets/rotate", {"encrypted": KNOWN_BLOB, "to_version": 0}),
]


@pytest.mark.parametrize(("op", "input"), SCHEMA_INVALID)
async def test_schema_invalid_input(rig: Rig, op: str, input: Any) -> None:
    peer = await rig.client()
    err = await call_error(peer, op, input)
    assert err.code == "INVALID_INPUT" and err.details is not None and err.details["errors"], op


HANDLER_INVALID = [
    ("/secrets/derivePassword", {"site": "a", "path": "m/74'/1'/0'/0'"}),
    ("/secrets/derivePassword", {}),
    ("/secrets/deriveEncryptionKey", {}),
    ("/secrets/deriveEncryptionKey", {"path": "m/74'/2'/0'/0'", "key_version": 2}),
    ("/secrets/deriveEd25519", {"path": "m/74'/0'/0'/0"}),  # normal index on ed25519
    ("/secrets/deriveEd25519", {"path": "m/74'/1'/0'/0'"}),  # outside the subtree
    ("/secrets/publicKey", {"path": "not a path"}),
    ("/secrets/deriveEncryptionKey", {"path": IDENTITY_PATH}),
    ("/secrets/deriveEthereumKey", {"path": "m/44'/61'/0'/0/0"}),
    ("/secrets/derivePassword", {"path": IDENTITY_PATH}),
    ("/secrets/encrypt", {"plaintext": "x", "aad": "\ud800"}),
    ("/secrets/encrypt", {"plaintext": "\ud800"}),
]


@pytest.mark.parametrize(("op", "input"), HANDLER_INVALID)
async def test_handler_invalid_input(rig: Rig, op: str, input: Any) -> None:
    peer = await rig.client()
    err = await call_error(peer, op, input)
    assert (err.code, err.retryable, err.details) == ("INVALID_INPUT", False, None), op


def tampered() -> list[tuple[dict[str, Any], str | None]]:
    def flip(text: str) -> str:
        raw = bytearray(base64.b64decode(text))
        raw[0] ^= 1
        return base64.b64encode(bytes(raw)).decode()

    blob: dict[str, Any] = dict(KNOWN_BLOB)
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({**blob, "iv": flip(blob["iv"])}, None),
        ({**blob, "data": flip(blob["data"])}, None),
        ({**blob, "data": blob["data"][:-8]}, None),
        ({**blob, "key_version": 3}, None),
        ({**blob, "key_version": 1}, None),
        ({**blob, "iv": "%%%"}, None),
        ({k: v for k, v in blob.items() if k != "iv"}, None),
        ({**blob, "data": 5}, None),
        (blob, "wrong aad"),
        ({}, None),
    ]
    return cases


async def test_tampered_blob_gets_the_generic_error(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    peer = await rig.client()
    for bad, aad in tampered():
        for op in ("/secrets/decrypt", "/secrets/rotate"):
            input: dict[str, Any] = {"encrypted": bad}
            if aad is not None:
                input["aad"] = aad
            err = await call_error(peer, op, input)
            assert (err.code, err.message, err.retryable, err.details) == (
                "INVALID_INPUT",
                "decryption failed",
                False,
                None,
            ), (op, bad)
    assert "alknet" not in caplog.text.replace("alknet.", "")  # the known plaintext
    assert str(KNOWN_BLOB["data"]) not in caplog.text


async def test_non_utf8_plaintext_asks_for_base64(rig: Rig) -> None:
    peer = await rig.client()
    blob = (await rig.service.encrypt(b"\xff\xfe")).to_dict()
    err = await call_error(peer, "/secrets/decrypt", {"encrypted": blob})
    assert err.code == "INVALID_INPUT" and "base64" in err.message and err.details is None
    out = await peer.call("/secrets/decrypt", {"encrypted": blob, "encoding": "base64"}, timeout=10)
    assert out == {"plaintext": base64.b64encode(b"\xff\xfe").decode()}


async def test_unexpected_failure_is_internal_and_echoes_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"leak {PLAINTEXT} {AAD}")

    monkeypatch.setattr(rig.service, "encrypt", boom)
    peer = await rig.client()
    err = await call_error(peer, "/secrets/encrypt", {"plaintext": PLAINTEXT, "aad": AAD})
    assert (err.code, err.message, err.details) == ("INTERNAL", "internal error", None)
    text = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    assert PLAINTEXT not in text and AAD not in text and "leak" not in text
    assert "RuntimeError" in text


# ------------------------------------------------------------------------------------------ hygiene


async def test_debug_logs_carry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rig = await make_rig(unlocked=False, allow_remote_unlock=True)
    try:
        peer = await rig.client()
        steps: list[Callable[[], Awaitable[Any]]] = [
            lambda: peer.call("/secrets/unlock", {"mnemonic": "abandon " * 12}, timeout=10),
            lambda: peer.call("/secrets/unlock", {"mnemonic": ABANDON, "passphrase": "TREZOR"}, timeout=10),
            lambda: peer.call("/secrets/lock", {}, timeout=10),
            lambda: peer.call("/secrets/unlock", {"mnemonic": ABANDON}, timeout=10),
        ]
        steps += [functools.partial(peer.call, op, input, timeout=10) for op, input in LOCKED_OPS.items()]
        steps += [
            lambda: peer.call("/secrets/encrypt", {"plaintext": PLAINTEXT, "aad": AAD}, timeout=10),
            lambda: peer.call("/secrets/decrypt", {"encrypted": tampered()[0][0]}, timeout=10),
            lambda: peer.call(
                "/secrets/derivePassword", {"path": "m/74'/1'/0'/0'", "length": 20}, timeout=10
            ),
            lambda: peer.call("/secrets/lock", {}, timeout=10),
        ]
        outputs: list[Any] = []
        for step in steps:
            try:
                outputs.append(await step())
            except CallError as exc:
                outputs.append(str(exc))
        blob = outputs[-4]
        plain = await peer.call("/secrets/unlock", {"mnemonic": ABANDON}, timeout=10)
        assert plain["fingerprint"] == IDENTITY_FINGERPRINT
        assert await peer.call("/secrets/decrypt", {"encrypted": blob, "aad": AAD}, timeout=10) == {
            "plaintext": PLAINTEXT
        }
    finally:
        await rig.close()
    text = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    assert "secrets unlocked" in text and "secrets locked" in text  # lifecycle lines are there
    forbidden = [
        "abandon",
        "TREZOR",
        SEED_EMPTY,
        SEED_TREZOR,
        PLAINTEXT,
        AAD,
        SITE_PASSWORD_32,
        PATH0_PASSWORD_20,
    ]
    for key in (IDENTITY_PRIVATE, AES_V2, ETH_PRIVATE):
        forbidden += [key, b64(key)]
    for value in forbidden:
        assert value not in text, value
    for output in outputs:
        if isinstance(output, str):  # error strings
            for word in ("abandon", "TREZOR", PLAINTEXT, AAD):
                assert word not in output
