"""Running a long-lived command (serve, connect) until SIGINT/SIGTERM, with logging set up."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from alknet.cli.context import Context
from alknet.core.logfmt import setup_logging

__all__ = ["run_until_stopped", "setup_cli_logging"]


def setup_cli_logging(ctx: Context) -> None:
    setup_logging(ctx.log_level, ctx.log_time, env=ctx.env)


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` in a fresh event loop. The first SIGINT/SIGTERM sets ``stop`` (graceful: the
    command drains and returns); a second one cancels ``main`` (immediate). Returns ``main``'s exit code, or 0
    when it was cancelled by a signal."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        signals = [s for s in (signal.SIGINT, signal.SIGTERM) if s is not None]

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            if stop.is_set():
                return 0
            raise
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(runner())
