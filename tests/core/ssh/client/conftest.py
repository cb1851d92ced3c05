"""Fixtures for the SSH client tests (real loopback sockets, a plain asyncssh server in-process)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from ssh_client_helpers import HttpTarget, Keys, TestSshServer


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def ssh_server(keys: Keys) -> AsyncIterator[TestSshServer]:
    server = TestSshServer(keys)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http_target() -> AsyncIterator[HttpTarget]:
    target = HttpTarget("127.0.0.1")
    await target.start()
    try:
        yield target
    finally:
        await target.stop()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def http_target6() -> AsyncIterator[HttpTarget]:
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback")
    target = HttpTarget("::1")
    await target.start()
    try:
        yield target
    finally:
        await target.stop()
