"""ConnectionLimiter and auth attempt counting at the unit level (auth-and-config.md §8)."""

from __future__ import annotations

import ipaddress

import pytest

from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.server.ratelimit import AuthAttemptCounter, ConnectionLimiter, key_for

PEER = "AB" * 32


def _ref(max_connections_per_ip: int = 0, max_auth_attempts: int = 10) -> AtomicRef[DynamicConfig]:
    limits = RateLimits(max_connections_per_ip=max_connections_per_ip, max_auth_attempts=max_auth_attempts)
    return AtomicRef(DynamicConfig(rate_limits=limits))


@pytest.mark.parametrize(
    ("ip", "peer_id", "key"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("::ffff:127.0.0.1", None, "127.0.0.1"),
        ("::1", None, "::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", None, "2001:db8::1"),
        ("2001:db8::2", None, "2001:db8::2"),
        (("::ffff:203.0.113.5", 40000), None, "203.0.113.5"),
        (ipaddress.ip_address("10.0.0.1"), None, "10.0.0.1"),
        (None, PEER, "iroh:" + PEER.lower()),
        ("127.0.0.1", PEER, "iroh:" + PEER.lower()),
        (None, None, None),
        ((), None, None),
    ],
)
def test_key_for(ip: object, peer_id: str | None, key: str | None) -> None:
    assert key_for(ip, peer_id=peer_id) == key


def test_key_for_refuses_a_non_ip() -> None:
    with pytest.raises(ValueError):
        key_for("example.com")


def test_two_per_ip_third_refused_then_accepted_after_close() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=2))
    key = key_for("127.0.0.1")
    assert limiter.try_acquire(key)
    assert limiter.try_acquire(key)
    assert not limiter.try_acquire(key)
    assert limiter.count(key) == 2  # the refused one is not counted
    limiter.release(key)
    assert limiter.try_acquire(key)
    assert not limiter.try_acquire(key)


def test_ipv4_mapped_counts_against_ipv4_and_ipv6_loopback_is_independent() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=2))
    assert limiter.try_acquire(key_for("127.0.0.1"))
    assert limiter.try_acquire(key_for("::ffff:127.0.0.1"))
    assert not limiter.try_acquire(key_for("::ffff:127.0.0.1"))
    assert not limiter.try_acquire(key_for("127.0.0.1"))
    assert limiter.try_acquire(key_for("::1"))
    assert limiter.try_acquire(key_for("::1"))
    assert not limiter.try_acquire(key_for("::1"))
    assert limiter.try_acquire(key_for("::2"))  # each IPv6 address on its own
    assert limiter.snapshot() == {"127.0.0.1": 2, "::1": 2, "::2": 1}


def test_iroh_peers_are_keyed_by_endpoint_id() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=1))
    assert limiter.try_acquire(key_for(None, peer_id=PEER))
    assert not limiter.try_acquire(key_for(None, peer_id=PEER.lower()))
    assert limiter.try_acquire(key_for(None, peer_id="cd" * 32))
    assert limiter.try_acquire(key_for("127.0.0.1"))


def test_no_address_is_not_limited_and_not_counted() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=1))
    for _ in range(5):
        assert limiter.try_acquire(None)
    limiter.release(None)
    assert len(limiter) == 0
    assert limiter.count(None) == 0


def test_reload_two_to_one_keeps_open_connections_and_refuses_the_next() -> None:
    ref = _ref(max_connections_per_ip=2)
    limiter = ConnectionLimiter(ref)
    key = key_for("127.0.0.1")
    assert limiter.try_acquire(key)
    assert limiter.try_acquire(key)
    ref.store(DynamicConfig(rate_limits=RateLimits(max_connections_per_ip=1)))
    assert not limiter.try_acquire(key)
    assert limiter.count(key) == 2  # nothing was closed or forgotten
    limiter.release(key)
    assert not limiter.try_acquire(key)  # still at the new limit
    limiter.release(key)
    assert limiter.try_acquire(key)


def test_reload_from_unlimited_applies_to_connections_already_open() -> None:
    ref = _ref(max_connections_per_ip=0)
    limiter = ConnectionLimiter(ref)
    for _ in range(3):
        assert limiter.try_acquire("198.51.100.1")
    ref.store(DynamicConfig(rate_limits=RateLimits(max_connections_per_ip=2)))
    assert not limiter.try_acquire("198.51.100.1")


def test_unlimited_accepts_fifty_and_holds_no_entry_after_all_close() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=0))
    key = key_for("127.0.0.1")
    assert all(limiter.try_acquire(key) for _ in range(50))
    assert limiter.count(key) == 50
    for _ in range(50):
        limiter.release(key)
    assert len(limiter) == 0
    assert limiter.snapshot() == {}


def test_entries_at_zero_are_deleted_and_extra_release_is_harmless() -> None:
    limiter = ConnectionLimiter(_ref(max_connections_per_ip=3))
    assert limiter.try_acquire("10.0.0.1")
    limiter.release("10.0.0.1")
    assert limiter.snapshot() == {}
    limiter.release("10.0.0.1")
    limiter.release("10.0.0.9")
    assert limiter.snapshot() == {}
    assert limiter.try_acquire("10.0.0.1")
    assert limiter.count("10.0.0.1") == 1
    assert "10.0.0.1" not in repr(limiter)


def test_auth_attempt_counter_limit() -> None:
    counter = AuthAttemptCounter(3)
    assert not counter.record_failure()
    assert not counter.record_failure()
    assert counter.record_failure()
    assert counter.exhausted
    assert counter.failures == 3


def test_auth_attempt_counter_unlimited() -> None:
    counter = AuthAttemptCounter(0)
    assert not any(counter.record_failure() for _ in range(1000))
    assert not counter.exhausted


def test_auth_attempt_limit_is_read_once_at_begin_auth() -> None:
    ref = _ref(max_auth_attempts=2)
    counter = AuthAttemptCounter.from_config(ref)
    ref.store(DynamicConfig(rate_limits=RateLimits(max_auth_attempts=5)))
    assert not counter.record_failure()
    assert counter.record_failure()
    assert AuthAttemptCounter.from_config(ref).limit == 5


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_auth_attempt_counter_refuses_bad_limits(bad: object) -> None:
    with pytest.raises(ValueError):
        AuthAttemptCounter(bad)  # type: ignore[arg-type]
