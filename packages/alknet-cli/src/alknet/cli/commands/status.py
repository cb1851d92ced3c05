"""``alknet status``: live SSH sessions and workers of a running server, through ``/services/status``
(cli.md §10). Needs scope ``admin:status``; never shows destinations, forward targets or byte counts."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.commands._connection import add_connection_options
from alknet.cli.commands.call import (
    add_codec_option,
    call_error_message,
    dump_json,
    open_peer,
    run_interruptible,
    ssh_options,
    table,
)
from alknet.cli.context import Context
from alknet.cli.errors import CliError
from alknet.cli.runner import setup_cli_logging

__all__ = ["format_status", "register"]

_PROG = "alknet status"
_ID_WIDTH = 15  # "SHA256:" and 8 characters, then an ellipsis


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "status",
        add_globals,
        help="show the live SSH sessions and workers of a running server",
        description=(
            "Call /services/status on the server and show its listeners, live SSH sessions and registered\n"
            "workers. The identity needs scope admin:status. --json prints the operation output as it is."
        ),
    )
    add_connection_options(p)
    add_codec_option(p)
    p.add_argument("--json", action="store_true", help="the raw operation output (JSON)")
    p.set_defaults(_run=run)


def _duration(seconds: float) -> str:
    """``3h12m``, ``5m``, ``40s``, ``2d3h``."""
    s = max(0, int(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _ago(stamp: object, now: float) -> str:
    """``12m ago`` from an RFC 3339 UTC time (the largest unit only)."""
    if not isinstance(stamp, str):
        return "-"
    try:
        then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return stamp
    text = _duration(now - then.timestamp())
    for i, c in enumerate(text):
        if c.isalpha():
            return text[: i + 1] + " ago"
    return text + " ago"


def _short(identity: object) -> str:
    text = str(identity) if identity is not None else "-"
    return text if len(text) <= _ID_WIDTH else text[:_ID_WIDTH] + "…"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def format_status(out: Any, now: float | None = None) -> list[str]:
    """The text form of a ``/services/status`` output (cli.md §10)."""
    if not isinstance(out, dict):
        raise CliError("malformed /services/status answer")
    now = time.time() if now is None else now
    server = out.get("server") if isinstance(out.get("server"), dict) else {}
    assert isinstance(server, dict)
    listeners = server.get("listeners") or []
    head = [
        "server",
        " ".join(str(a) for a in listeners) or "-",
        f"alknet-core {_text(server.get('version'))}",
    ]
    uptime = server.get("uptime_s")
    if isinstance(uptime, int | float):
        head.append(f"up {_duration(uptime)}")
    endpoint = server.get("endpoint_id")
    if isinstance(endpoint, str) and endpoint:
        head.append(f"endpoint id {endpoint[:8]}...")
    lines = ["  ".join(head)]
    sessions = [s for s in out.get("sessions") or [] if isinstance(s, dict)]
    lines.append(f"SESSIONS ({len(sessions)})")
    if sessions:
        rows = [("IDENTITY", "USER", "TRANSPORT", "REMOTE", "CONNECTED", "CHANNELS", "REMOTE-FORWARDS")]
        rows += [
            (
                _short(s.get("identity")),
                _text(s.get("user")),
                _text(s.get("transport")),
                _text(s.get("remote_addr")),
                _ago(s.get("connected_at"), now),
                _text(s.get("channels")),
                _text(s.get("remote_forwards")),
            )
            for s in sessions
        ]
        lines += table(rows, "  ")
    workers = [w for w in out.get("workers") or [] if isinstance(w, dict)]
    lines.append(f"WORKERS ({len(workers)})")
    if workers:
        wrows = [("NODE", "IDENTITY", "OPERATIONS", "CONNECTED")]
        wrows += [
            (
                _text(w.get("node")),
                _short(w.get("identity")),
                _text(w.get("operations")),
                _ago(w.get("connected_at"), now),
            )
            for w in workers
        ]
        lines += table(wrows, "  ")
    return lines


def run(args: argparse.Namespace, ctx: Context) -> int:
    from alknet.core.call.envelope import CallError

    options = ssh_options(args, ctx, _PROG)
    setup_cli_logging(ctx)

    async def main() -> int:
        async with open_peer(options, args.codec) as peer:
            try:
                out = await peer.call("/services/status", {})
            except CallError as exc:
                raise CliError(call_error_message(exc)) from None
        lines = [dump_json(out, pretty=sys.stdout.isatty())] if args.json else format_status(out)
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        return 0

    return run_interruptible(main)
