"""The client's reconnect supervisor (transport-and-ssh.md §14): always on, never gives up.

Delays 1, 2, 4, 8, 16, 30, 30, ... seconds, each times a uniform factor in [0.8, 1.2]; the sequence starts
again after a connection that stayed up at least 30 s. Only the exception classes passed as ``fatal``
(host-key or endpoint-id mismatch) end the loop; they propagate unchanged. Clock, sleep and the random factor
are injectable.

SSH-free: the SSH client passes ``connect()`` (transport + SSH handshake + host-key check, raising on failure)
and ``serve(conn)`` (runs while the connection is up -- publish it to the SOCKS5/-L listeners, re-request -R
forwards, wait for it to close -- and returns or raises when it ends; it owns the connection and closes it).

Log lines (logger ``alknet.client``, logfmt fields)::

    level=INFO msg="connected" server=<describe()>
    level=INFO msg="disconnected" reason="..."
    level=WARNING msg="connect failed" error="..."          (ERROR for the classes in ``logged_as_error``)
    level=INFO msg="reconnecting" attempt=<n> delay=<seconds, 3 decimals>
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

from alknet.core import logfmt

__all__ = [
    "BASE_DELAYS",
    "JITTER",
    "STABLE_AFTER",
    "Backoff",
    "ReconnectSupervisor",
    "describe_error",
]

log = logging.getLogger("alknet.client")

BASE_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
JITTER: tuple[float, float] = (0.8, 1.2)
STABLE_AFTER = 30.0

T = TypeVar("T")


class Backoff:
    """The delay sequence. ``attempt`` is the number of delays handed out since the last ``reset()``."""

    def __init__(self, *, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self._uniform = uniform
        self.attempt = 0

    def next_delay(self) -> float:
        base = BASE_DELAYS[min(self.attempt, len(BASE_DELAYS) - 1)]
        self.attempt += 1
        return base * self._uniform(*JITTER)

    def reset(self) -> None:
        self.attempt = 0


def describe_error(exc: BaseException) -> str:
    """One line for a log field: the exception text, or its class name when the text is empty."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


class ReconnectSupervisor(Generic[T]):
    """Run ``connect`` / ``serve`` forever with backoff between attempts.

    The first attempt starts at once; every later one waits ``Backoff.next_delay()``. ``connected`` is True
    while ``serve`` runs. ``run()`` returns only by raising: a ``fatal`` exception, or ``CancelledError`` when
    cancelled.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[T]],
        serve: Callable[[T], Awaitable[object]],
        *,
        server: str,
        fatal: tuple[type[BaseException], ...] = (),
        logged_as_error: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        uniform: Callable[[float, float], float] = random.uniform,
        stable_after: float = STABLE_AFTER,
        error_text: Callable[[BaseException], str] = describe_error,
        logger: logging.Logger = log,
    ) -> None:
        self._connect = connect
        self._serve = serve
        self.server = server
        self._fatal = fatal
        self._logged_as_error = logged_as_error
        self._clock = clock
        self._sleep = sleep
        self._stable_after = stable_after
        self._error_text = error_text
        self._log = logger
        self.backoff = Backoff(uniform=uniform)
        self.connected = False
        self.connections = 0

    async def run(self) -> NoReturn:
        while True:
            await self._attempt()
            delay = self.backoff.next_delay()
            logfmt.log_event(
                self._log,
                logging.INFO,
                "reconnecting",
                attempt=self.backoff.attempt,
                delay=logfmt.format_duration(delay),
            )
            await self._sleep(delay)

    async def _attempt(self) -> None:
        try:
            conn = await self._connect()
        except self._fatal:
            raise
        except Exception as exc:
            level = logging.ERROR if isinstance(exc, self._logged_as_error) else logging.WARNING
            logfmt.log_event(self._log, level, "connect failed", error=self._error_text(exc))
            return
        started = self._clock()
        self.connected = True
        self.connections += 1
        logfmt.log_event(self._log, logging.INFO, "connected", server=self.server)
        reason = "connection closed"
        try:
            result = await self._serve(conn)
            if isinstance(result, str) and result:
                reason = result
        except self._fatal:
            raise
        except Exception as exc:
            reason = self._error_text(exc)
        finally:
            self.connected = False
        logfmt.log_event(self._log, logging.INFO, "disconnected", reason=reason)
        if self._clock() - started >= self._stable_after:
            self.backoff.reset()
