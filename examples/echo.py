"""An example worker module: ``/echo/say`` returns its input, ``/echo/count`` streams numbers and
``/echo/sleep`` answers late (to try deadlines and Ctrl-C).

Serve it from a worker (see README.md next to this file)::

    alknet worker --node dev1 --module examples/echo.py

``alknet worker`` imports this file and calls ``register(registry)``; the operations then appear on the head
as ``/dev1/echo/say``, ``/dev1/echo/count`` and ``/dev1/echo/sleep``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from alknet.core.call import OperationContext, OperationRegistry, OperationSpec, OperationType


async def say(input: Any, ctx: OperationContext) -> Any:
    """Return the input unchanged."""
    return input


async def count(input: dict[str, Any], ctx: OperationContext) -> AsyncIterator[dict[str, int]]:
    """Yield ``{"i": 0}`` .. ``{"i": n-1}``, ``interval`` seconds apart."""
    interval = float(input.get("interval", 0))
    for i in range(int(input["n"])):
        if i and interval:
            await asyncio.sleep(interval)
        yield {"i": i}


async def sleep(input: dict[str, Any], ctx: OperationContext) -> dict[str, float]:
    """Wait ``seconds``, then answer ``{"slept": seconds}`` (cancelled at the caller's deadline or abort)."""
    seconds = float(input["seconds"])
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def register(registry: OperationRegistry) -> None:
    registry.register(
        OperationSpec(
            "/echo/say",
            "echo",
            OperationType.QUERY,
            description="returns its input",
        ),
        say,
    )
    registry.register(
        OperationSpec(
            "/echo/count",
            "echo",
            OperationType.SUBSCRIPTION,
            input_schema={
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": 0, "maximum": 1000000},
                    "interval": {"type": "number", "minimum": 0, "maximum": 60},
                },
                "required": ["n"],
                "additionalProperties": False,
            },
            output_schema={"type": "object", "properties": {"i": {"type": "integer"}}},
            description="streams {i} for i in 0..n-1, interval seconds apart",
        ),
        count,
    )
    registry.register(
        OperationSpec(
            "/echo/sleep",
            "echo",
            OperationType.QUERY,
            input_schema={
                "type": "object",
                "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600}},
                "required": ["seconds"],
                "additionalProperties": False,
            },
            description="answers {slept} after the given seconds",
        ),
        sleep,
    )
