"""``LeaseTable``: claim, record, release and same-identity takeover (transport-and-ssh.md §11)."""

from __future__ import annotations

import asyncssh

from alknet.core.ssh.leases import LeaseListener, LeaseTable, lease_host


class Bound(asyncssh.SSHListener):
    """A bound listener as asyncssh returns it (port and close only)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.closed = 0

    def get_port(self) -> int:
        return self.port

    def close(self) -> None:
        self.closed += 1


def test_lease_host_spellings() -> None:
    assert [lease_host(h) for h in ("", "*", "0.0.0.0", "::")] == ["*"] * 4
    assert lease_host("localhost") == "localhost"
    assert lease_host("127.0.0.1") == "127.0.0.1"
    assert lease_host("[::1]") == "::1"
    assert lease_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert lease_host("example.com") is None


def test_same_identity_takes_over_other_identity_is_refused() -> None:
    table = LeaseTable()
    a1, a2, b = object(), object(), object()
    lease = table.claim(("127.0.0.1", 9000), a1, "id-a")
    assert lease is not None
    assert table.claim(("127.0.0.1", 9000), a2, "id-a") is None  # still being bound
    first = Bound(9000)
    assert table.record(lease, first) is lease
    assert table.claim(("127.0.0.1", 9000), b, "id-b") is None
    assert table.claim(("127.0.0.1", 9000), a1, "id-a") is None  # the same connection asks twice
    taken = table.claim(("127.0.0.1", 9000), a2, "id-a")
    assert taken is not None and first.closed == 1 and lease.released
    second = Bound(9000)
    table.record(taken, second)
    table.release_owner(a1)  # the old owner's cleanup does not touch the new lease
    assert table.get(("127.0.0.1", 9000)) is taken and second.closed == 0
    table.release_owner(a2)
    assert len(table) == 0 and second.closed == 1


def test_port_zero_is_keyed_by_the_chosen_port() -> None:
    table = LeaseTable()
    owner = object()
    l1 = table.claim(("127.0.0.1", 0), owner, "id")
    l2 = table.claim(("127.0.0.1", 0), owner, "id")
    assert l1 is not None and l2 is not None
    table.record(l1, Bound(40001))
    table.record(l2, Bound(40002))
    assert table.get(("127.0.0.1", 40001)) is l1 and table.get(("127.0.0.1", 40002)) is l2
    assert len(table) == 2


def test_lease_listener_close_releases_once() -> None:
    table = LeaseTable()
    owner = object()
    lease = table.claim(("*", 7000), owner, "id")
    assert lease is not None
    inner = Bound(7000)
    table.record(lease, inner)
    wrapper = LeaseListener(table, lease, inner)
    assert wrapper.get_port() == 7000
    wrapper.close()
    wrapper.close()
    assert len(table) == 0 and lease.released


def test_record_after_release_closes_the_listener() -> None:
    table = LeaseTable()
    lease = table.claim(("127.0.0.1", 7001), object(), "id")
    assert lease is not None
    table.release(lease)
    late = Bound(7001)
    assert table.record(lease, late) is None and late.closed == 1
