"""``alknet call``: invoke one operation over the control channel and print the result (cli.md §8).

Also the pieces ``worker`` and ``status`` share: the ``--codec`` option, opening a ``CallPeer`` on a fresh
SSH connection with one-line connection errors, the JSON output rule and a Ctrl-C aware runner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.commands._connection import add_connection_options, client_options
from alknet.cli.context import Context
from alknet.cli.errors import EXIT_RUNTIME, CliError, UsageError
from alknet.cli.runner import setup_cli_logging
from alknet.cli.state import config_sources
from alknet.core.ssh.client import ClientOptions, SshClient
from alknet.core.ssh.forwards import NotConnected
from alknet.core.ssh.known_hosts import HostKeyError
from alknet.core.ssh.reconnect import describe_error

if TYPE_CHECKING:  # the call protocol (and jsonschema) load only when a command runs
    from alknet.core.api import CallPeer
    from alknet.core.call.envelope import CallError

__all__ = [
    "Interrupted",
    "add_codec_option",
    "call_error_message",
    "dump_json",
    "open_peer",
    "parse_input",
    "register",
    "run_interruptible",
    "ssh_options",
    "table",
]

_PROG = "alknet call"
DEFAULT_TIMEOUT = 30.0


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the command was running."""


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "call",
        add_globals,
        help="invoke one operation over the control channel and print its output",
        description=(
            "Invoke one call-protocol operation on the server (or, through it, on a worker) and print each\n"
            "output as JSON on stdout: indented on a terminal, one compact value per line otherwise. A call\n"
            "error prints 'alknet: error: <CODE>: <message>' and exits 1.\n\n"
            "examples:\n"
            "  alknet call /services/list\n"
            '  alknet call /dev1/echo/say \'{"text":"hi"}\'\n'
            "  alknet call /dev1/logs/tail @query.json --follow\n"
            "  alknet call --list"
        ),
    )
    add_connection_options(p)
    add_codec_option(p)
    g = p.add_argument_group("call options")
    g.add_argument("operation", nargs="?", metavar="OPERATION", help="operation path, e.g. /services/list")
    g.add_argument("input", nargs="?", metavar="INPUT", help="JSON text, @FILE, or - for stdin (default {})")
    g.add_argument(
        "--follow",
        action="store_true",
        help="subscription: no deadline, print every output until completed; Ctrl-C ends it (exit 0)",
    )
    g.add_argument(
        "--timeout",
        metavar="SECS",
        help="call deadline (default 30; none with --follow); 0 = no deadline, only with --follow",
    )
    out = g.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="compact JSON, one value per line")
    out.add_argument("--pretty", action="store_true", help="indented JSON (2 spaces)")
    g.add_argument(
        "--list", action="store_true", help="call /services/list and print PATH  TYPE  DESCRIPTION"
    )
    p.set_defaults(_run=run)


def add_codec_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--codec",
        choices=("json", "msgpack"),
        default="json",
        help="control-channel body codec: json (port 0) or msgpack (port 1) (default json)",
    )


# ------------------------------------------------------------------------------------------ input/output


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_input(text: str | None, prog: str = _PROG) -> Any:
    """INPUT: JSON text, ``@FILE`` or ``-`` (stdin); ``{}`` when absent. A usage error (exit 2) when it is not
    a JSON value of the call protocol's value model."""
    from alknet.core.call.frame import ValueModelError, check_value

    if text is None:
        return {}
    source = "INPUT"
    if text == "-":
        source, text = "stdin", sys.stdin.read()
    elif text.startswith("@"):
        path = Path(text[1:]).expanduser()
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"INPUT: cannot read {path}: {getattr(exc, 'strerror', None) or exc}", prog
            ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        check_value(value)
    except (json.JSONDecodeError, ValueError, ValueModelError, RecursionError) as exc:
        raise UsageError(f"{source} is not valid JSON: {str(exc)[:200]}", prog) from None
    return value


def dump_json(value: Any, *, pretty: bool) -> str:
    """The output form of a value: indented (2 spaces) or compact, non-ASCII kept as is."""
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _pretty(args: argparse.Namespace) -> bool:
    if args.json:
        return False
    if args.pretty:
        return True
    return sys.stdout.isatty()


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def call_error_message(exc: CallError) -> str:
    """``<CODE>: <message>`` plus `` (retryable)`` when flagged."""
    return f"{exc.code}: {exc.message}" + (" (retryable)" if exc.retryable else "")


def _timeout(args: argparse.Namespace) -> float | None:
    """``--timeout`` in seconds, ``None`` for no deadline; usage errors per cli.md §8."""
    if args.timeout is None:
        return None if args.follow else DEFAULT_TIMEOUT
    try:
        value = float(args.timeout)
    except ValueError:
        raise UsageError(f"--timeout: not a number: {args.timeout!r}", _PROG) from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--timeout: must be a number >= 0: {args.timeout!r}", _PROG)
    if value == 0:
        if not args.follow:
            raise UsageError("--timeout 0 (no deadline) is only allowed with --follow", _PROG)
        return None
    return value


# ------------------------------------------------------------------------------------------ connection


def ssh_options(args: argparse.Namespace, ctx: Context, prog: str) -> ClientOptions:
    """Connection options of cli.md §3 (flags > environment > config), checked before any connection."""
    static = config_sources(ctx, args).load_static()
    return client_options(args, ctx, static, prog)


@contextlib.asynccontextmanager
async def open_peer(options: ClientOptions, codec: str) -> AsyncIterator[CallPeer]:
    """One SSH connection and one control channel, as a started ``CallPeer``; connection and auth failures
    are one-line ``CliError``s (exit 1). Everything is closed on exit (queued frames are flushed first)."""
    from alknet.core.api import CallPeer, open_control

    client = SshClient(options)
    server = client.describe()
    try:
        try:
            conn = await client.connect()
        except HostKeyError as exc:
            raise CliError(str(exc)) from None
        except asyncssh.PermissionDenied:
            raise CliError(f"cannot connect to {server}: authentication failed") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise CliError(f"cannot connect to {server}: {describe_error(exc)}") from None
        try:
            stream = await open_control(conn, client, codec=codec, on_close=conn.aclose)
        except asyncssh.ChannelOpenError as exc:
            await conn.aclose()
            raise CliError(f"control channel refused by {server}: {exc.reason}") from None
        except NotConnected:
            await conn.aclose()
            raise CliError(f"cannot connect to {server}: {conn.close_reason}") from None
        except BaseException:
            await conn.aclose()
            raise
        peer = CallPeer(stream)
        try:
            peer.start()
            yield peer
        finally:
            await peer.close()
            await stream.close()
    finally:
        await client.aclose()


def run_interruptible(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main()`` in a fresh event loop. SIGINT/SIGTERM cancel it; ``main`` sees ``CancelledError``
    where it waits and may turn it into an exit code; one that escapes becomes ``interrupted`` (exit 1)."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        interrupted = False

        def on_signal() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
        try:
            return await main()
        except asyncio.CancelledError:
            if interrupted:
                raise Interrupted() from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except Interrupted:
        raise CliError("interrupted") from None


# ------------------------------------------------------------------------------------------ the command


def _check_args(args: argparse.Namespace) -> None:
    if args.list:
        if args.operation is not None or args.input is not None:
            raise UsageError("--list takes no OPERATION or INPUT", _PROG)
        if args.follow:
            raise UsageError("--list conflicts with --follow", _PROG)
    elif args.operation is None:
        raise UsageError("OPERATION is required (or --list)", _PROG)


def _format_list(output: Any) -> list[str]:
    ops = output.get("operations") if isinstance(output, dict) else None
    if not isinstance(ops, list):
        raise CliError("malformed /services/list answer")
    rows: list[Sequence[str]] = [("PATH", "TYPE", "DESCRIPTION")]
    for op in ops:
        if isinstance(op, dict):
            rows.append((str(op.get("name", "")), str(op.get("opType", "")), str(op.get("description", ""))))
    return table(rows)


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns separated by two spaces (no trailing spaces)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


async def _follow(peer: CallPeer, op: str, value: Any, timeout: float | None, pretty: bool) -> int:
    deadline = None if timeout is None else int((time.time() + timeout) * 1000)
    sub = peer.subscribe(op, value, deadline_ms=deadline)
    try:
        async with sub:
            async for item in sub:
                _print(dump_json(item, pretty=pretty))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return 0  # Ctrl-C ends a follow: call.aborted was sent when the subscription was left
    return 0


async def _plain(peer: CallPeer, op: str, value: Any, timeout: float | None) -> Any:
    try:
        return await peer.call(op, value, timeout=timeout)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise CliError("interrupted") from None  # call.aborted is queued and flushed on close


def run(args: argparse.Namespace, ctx: Context) -> int:
    _check_args(args)
    timeout = _timeout(args)
    value = None if args.list else parse_input(args.input)
    options = ssh_options(args, ctx, _PROG)
    setup_cli_logging(ctx)
    pretty = _pretty(args)

    from alknet.core.call.envelope import CallError

    async def main() -> int:
        async with open_peer(options, args.codec) as peer:
            try:
                if args.list:
                    for line in _format_list(await _plain(peer, "/services/list", {}, timeout)):
                        _print(line)
                    return 0
                if args.follow:
                    return await _follow(peer, args.operation, value, timeout, pretty)
                _print(dump_json(await _plain(peer, args.operation, value, timeout), pretty=pretty))
                return 0
            except CallError as exc:
                raise CliError(call_error_message(exc), EXIT_RUNTIME) from None

    return run_interruptible(main)
