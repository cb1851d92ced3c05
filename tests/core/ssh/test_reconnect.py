"""Reconnect supervisor (transport-and-ssh.md §14), fake clock: delays, reset, fatal errors, log lines."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from alknet.core import logfmt
from alknet.core.ssh.reconnect import BASE_DELAYS, Backoff, ReconnectSupervisor

BOUNDS = [(0.8 * b, 1.2 * b) for b in (1, 2, 4, 8, 16, 30, 30, 30, 30)]


class HostKeyMismatch(Exception):
    pass


class AuthRejected(Exception):
    pass


class Stop(BaseException):
    """Raised by the fake sleep to end ``run()`` after enough attempts."""


class FakeTime:
    def __init__(self, max_sleeps: int) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.max_sleeps = max_sleeps

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        if len(self.sleeps) >= self.max_sleeps:
            raise Stop()


def _supervisor(
    fake: FakeTime,
    connect: Callable[[], object],
    serve: Callable[[object], object] | None = None,
    **kwargs: object,
) -> ReconnectSupervisor[object]:
    async def do_connect() -> object:
        return connect()

    async def do_serve(conn: object) -> object:
        return serve(conn) if serve is not None else None

    return ReconnectSupervisor(
        do_connect,
        do_serve,
        server="tcp://127.0.0.1:2222",
        fatal=(HostKeyMismatch,),
        logged_as_error=(AuthRejected,),
        clock=fake.clock,
        sleep=fake.sleep,
        uniform=random.Random(7).uniform,
        **kwargs,  # type: ignore[arg-type]
    )


def _refused() -> object:
    raise ConnectionRefusedError(111, "Connect call failed")


async def test_delays_double_with_jitter_and_cap() -> None:
    fake = FakeTime(max_sleeps=len(BOUNDS))
    with pytest.raises(Stop):
        await _supervisor(fake, _refused).run()
    assert len(fake.sleeps) == len(BOUNDS)
    for delay, (low, high) in zip(fake.sleeps, BOUNDS, strict=True):
        assert low <= delay <= high


@pytest.mark.parametrize("factor", [0.8, 1.2])
async def test_jitter_extremes(factor: float) -> None:
    fake = FakeTime(max_sleeps=8)
    supervisor = _supervisor(fake, _refused)
    supervisor.backoff = Backoff(uniform=lambda low, high: factor if (low, high) == (0.8, 1.2) else -1.0)
    with pytest.raises(Stop):
        await supervisor.run()
    assert fake.sleeps == pytest.approx([factor * b for b in (1, 2, 4, 8, 16, 30, 30, 30)])


async def test_reset_after_connection_up_31s() -> None:
    fake = FakeTime(max_sleeps=6)
    outcomes = iter(["fail", "fail", "fail", "ok31", "fail", "fail"])

    def connect() -> object:
        outcome = next(outcomes)
        if outcome == "fail":
            raise ConnectionRefusedError()
        return outcome

    def serve(conn: object) -> object:
        fake.now += 31.0
        return "connection lost"

    with pytest.raises(Stop):
        await _supervisor(fake, connect, serve).run()
    for delay, (low, high) in zip(fake.sleeps, [*BOUNDS[:3], BOUNDS[0], BOUNDS[1], BOUNDS[2]], strict=True):
        assert low <= delay <= high


async def test_short_connection_does_not_reset() -> None:
    fake = FakeTime(max_sleeps=4)
    outcomes = iter(["fail", "fail", "ok5", "fail"])

    def connect() -> object:
        if next(outcomes) == "fail":
            raise ConnectionRefusedError()
        return "conn"

    def serve(conn: object) -> object:
        fake.now += 5.0
        raise ConnectionResetError("Connection lost")

    with pytest.raises(Stop):
        await _supervisor(fake, connect, serve).run()
    for delay, (low, high) in zip(fake.sleeps, BOUNDS[:4], strict=True):
        assert low <= delay <= high


async def test_fatal_error_is_never_retried() -> None:
    fake = FakeTime(max_sleeps=100)

    def connect() -> object:
        raise HostKeyMismatch("host key mismatch for 127.0.0.1: expected SHA256:a, got SHA256:b")

    with pytest.raises(HostKeyMismatch, match="host key mismatch"):
        await _supervisor(fake, connect).run()
    assert fake.sleeps == []


async def test_fatal_error_during_serve_propagates() -> None:
    fake = FakeTime(max_sleeps=100)

    def serve(conn: object) -> object:
        raise HostKeyMismatch("x")

    supervisor = _supervisor(fake, lambda: "conn", serve)
    with pytest.raises(HostKeyMismatch):
        await supervisor.run()
    assert supervisor.connected is False and fake.sleeps == []


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logfmt.LogfmtFormatter(with_time=False)
    return [formatter.format(r) for r in caplog.records if r.name == "alknet.client"]


async def test_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alknet.client")
    fake = FakeTime(max_sleeps=3)
    outcomes = iter(["auth", "ok", "refused"])

    def connect() -> object:
        outcome = next(outcomes)
        if outcome == "auth":
            raise AuthRejected("authentication rejected")
        if outcome == "refused":
            raise ConnectionRefusedError(111, "Connect call failed")
        return "conn"

    def serve(conn: object) -> object:
        fake.now += 2
        return "server closed the connection"

    supervisor = _supervisor(fake, connect, serve)
    supervisor.backoff = Backoff(uniform=lambda low, high: 1.0)
    with pytest.raises(Stop):
        await supervisor.run()
    assert _lines(caplog) == [
        'level=ERROR msg="connect failed" error="authentication rejected"',
        'level=INFO msg="reconnecting" attempt=1 delay=1.000',
        'level=INFO msg="connected" server=tcp://127.0.0.1:2222',
        'level=INFO msg="disconnected" reason="server closed the connection"',
        'level=INFO msg="reconnecting" attempt=2 delay=2.000',
        'level=WARNING msg="connect failed" error="[Errno 111] Connect call failed"',
        'level=INFO msg="reconnecting" attempt=3 delay=4.000',
    ]
    assert supervisor.connections == 1


async def test_serve_exception_becomes_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alknet.client")
    fake = FakeTime(max_sleeps=1)

    def serve(conn: object) -> object:
        raise ConnectionResetError()

    with pytest.raises(Stop):
        await _supervisor(fake, lambda: "conn", serve).run()
    assert 'level=INFO msg="disconnected" reason=ConnectionResetError' in _lines(caplog)


async def test_connected_flag_and_cancellation() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def connect() -> str:
        return "conn"

    async def serve(conn: str) -> None:
        started.set()
        await release.wait()

    supervisor: ReconnectSupervisor[str] = ReconnectSupervisor(connect, serve, server="x")
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(started.wait(), 5)
    assert supervisor.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not supervisor.connected


def test_default_backoff_stays_in_bounds() -> None:
    backoff = Backoff()
    for _ in range(5):
        delays = [backoff.next_delay() for _ in range(len(BOUNDS))]
        assert all(low <= d <= high for d, (low, high) in zip(delays, BOUNDS, strict=True))
        backoff.reset()
    assert BASE_DELAYS == (1, 2, 4, 8, 16, 30)
