"""``alknet worker``: register local operations with a head under a node name and serve routed calls
(cli.md §9). Same reconnect supervisor as ``connect``; registers again after every reconnect.

``--service secrets`` serves the ``/secrets/*`` operations of a :class:`~alknet.secret.SecretService`
(secret.md §9; the head sees them as ``/<node>/secrets/...``). The service starts locked; ``--unlock`` reads
the words as cli.md §1 says (:mod:`alknet.cli.secret_input`) and unlocks it before connecting. There is no
remote unlock (``/secrets/unlock`` is not registered). The words are never logged, and the seed is zeroed
when the worker stops. ``storage`` and ``flowgraph`` are not available yet (exit 2)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from alknet.cli.commands._common import AddGlobals, add_command
from alknet.cli.commands._connection import add_connection_options, client_options
from alknet.cli.commands.call import add_codec_option
from alknet.cli.context import Context
from alknet.cli.errors import CliError, UsageError
from alknet.cli.runner import run_until_stopped, setup_cli_logging
from alknet.cli.secret_input import read_mnemonic
from alknet.cli.state import config_sources
from alknet.core.ssh.client import SshClient
from alknet.core.ssh.known_hosts import HostKeyError

if TYPE_CHECKING:  # the call protocol (and jsonschema) load only when the command runs
    from alknet.core.call.registry import OperationRegistry
    from alknet.secret.service import SecretService

__all__ = ["load_module_spec", "register"]

_PROG = "alknet worker"
_FUNC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: The built-in services ``--service`` can serve in this release.
AVAILABLE_SERVICES = ("secrets",)


def register(sub: Any, add_globals: AddGlobals) -> None:
    p = add_command(
        sub,
        "worker",
        add_globals,
        help="serve local operations to a head under a node name",
        description=(
            "Connect to a head, register the operations of the given modules as /<node>/..., and serve the\n"
            "calls the head routes here. Each --module is imported (a dotted module, or a path to a .py file)\n"
            "and its FUNC (default register) is called with the OperationRegistry, sync or async. The identity\n"
            "needs scope node:<name> (or node:*). Reconnects with backoff forever and registers again after\n"
            "every reconnect; a refused registration logs an ERROR and is retried the same way.\n\n"
            "--service secrets serves /<node>/secrets/*, locked until --unlock reads the mnemonic words\n"
            "(no-echo prompt on a terminal, else line 1 of stdin). Callers need a path grant such as\n"
            "/<node>/secrets/* plus the secrets:* scope of each operation.\n\n"
            "examples:\n"
            "  alknet worker --server head.example:2222 --node dev1 --module examples/echo.py\n"
            "  alknet worker --node dev1 --module myapp.ops:register_ops\n"
            "  alknet worker --node vault --service secrets --unlock"
        ),
    )
    add_connection_options(p)
    add_codec_option(p)
    g = p.add_argument_group("worker options")
    g.add_argument(
        "--node",
        metavar="NAME",
        help="node name, [a-z0-9][a-z0-9-]{0,62}, not 'head' (env ALKNET_NODE; required)",
    )
    g.add_argument(
        "--module",
        action="append",
        metavar="MOD[:FUNC]",
        help="import MOD (dotted name or path.py) and call FUNC(registry); FUNC defaults to register; repeatable",
    )
    g.add_argument(
        "--service",
        action="append",
        choices=("storage", "secrets", "flowgraph"),
        metavar="NAME",
        help="built-in service to serve: storage, secrets, flowgraph (repeatable; only secrets in this release)",
    )
    g.add_argument(
        "--unlock",
        action="store_true",
        help="unlock the secrets service at start (words from a no-echo prompt, else line 1 of stdin)",
    )
    p.set_defaults(_run=run)


# ------------------------------------------------------------------------------------------ modules


def _split_spec(text: str) -> tuple[str, str]:
    """``MOD[:FUNC]`` -> (module, func); the colon splits only when what follows is an identifier."""
    mod, sep, func = text.rpartition(":")
    if sep and mod and _FUNC_RE.fullmatch(func):
        return mod, func
    return text, "register"


def _import(target: str, spec_text: str) -> ModuleType:
    is_path = target.endswith(".py") or "/" in target or os.sep in target
    try:
        if is_path:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"--module {spec_text}: no such file {target}", _PROG)
            name = "alknet_worker_" + re.sub(r"\W", "_", path.stem)
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"--module {spec_text}: cannot load {target}", _PROG)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        if not _DOTTED_RE.fullmatch(target):
            raise UsageError(f"--module {spec_text}: not a module name or a .py path", _PROG)
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)  # like 'python -m': modules next to the working directory import
        return importlib.import_module(target)
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        raise UsageError(f"--module {spec_text}: no module named {exc.name or target}", _PROG) from None
    except Exception as exc:
        raise UsageError(f"--module {spec_text}: import failed: {type(exc).__name__}: {exc}", _PROG) from None


async def load_module_spec(spec_text: str, registry: OperationRegistry) -> None:
    """Import ``MOD[:FUNC]`` (a dotted module or a ``.py`` path) and let ``FUNC(registry)`` (sync or async)
    register its operations. Any failure is a usage error (exit 2) naming the module."""
    target, func_name = _split_spec(spec_text)
    module = _import(target, spec_text)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"--module {spec_text}: {target} has no function {func_name}", _PROG)
    try:
        result = func(registry)
        if inspect.isawaitable(result):
            await result
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--module {spec_text}: {func_name}(registry) failed: {exc}", _PROG) from None


# ------------------------------------------------------------------------------------------ the command


def run(args: argparse.Namespace, ctx: Context) -> int:
    static = config_sources(ctx, args).load_static()
    worker = static.worker
    if not worker.node:
        raise UsageError("--node is required (or ALKNET_NODE)", _PROG)
    missing = [s for s in worker.services if s not in AVAILABLE_SERVICES]
    if missing:
        raise UsageError(
            f"--service {missing[0]}: built-in services other than secrets are not available in this release",
            _PROG,
        )
    with_secrets = "secrets" in worker.services
    if args.unlock and not with_secrets:
        raise UsageError("--unlock needs --service secrets", _PROG)
    options = client_options(args, ctx, static, _PROG)
    words = read_mnemonic(passphrase=False, prog=_PROG)[0] if args.unlock else None
    client = SshClient(options)
    name = worker.node
    modules = worker.modules
    setup_cli_logging(ctx)

    from alknet.core.api import ConnectOptions, run_worker
    from alknet.core.call.registry import OperationRegistry
    from alknet.core.node import Node

    async def main(stop: asyncio.Event) -> int:
        nonlocal words
        registry = OperationRegistry()
        service: SecretService | None = None
        try:
            if with_secrets:
                service = await _secrets_service(registry, words)
            words = None
            for spec_text in modules:
                await load_module_spec(spec_text, registry)
        except BaseException:
            words = None
            if service is not None:
                await service.lock()
            await client.aclose()
            raise
        node = Node(name, registry)
        task = asyncio.ensure_future(
            run_worker(ConnectOptions(codec=args.codec), node, name=name, client=client)
        )
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # HostKeyError: run_worker never returns otherwise
        except HostKeyError as exc:
            raise CliError(str(exc)) from None
        finally:
            stopper.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await node.close()
            await client.aclose()
            if service is not None:
                await service.lock()  # zero the seed and every cached key
        return 0

    return run_until_stopped(main)


async def _secrets_service(registry: OperationRegistry, words: str | None) -> SecretService:
    """A ``SecretService`` with its ``/secrets/*`` operations on ``registry``, unlocked with ``words`` unless
    ``None``. Invalid words exit 1 with the library's message, which never quotes a word."""
    from alknet.secret import InvalidMnemonicError, SecretService, register_secret_operations

    service = SecretService()
    register_secret_operations(registry, service)
    if words is not None:
        try:
            await service.unlock(words)
        except InvalidMnemonicError as exc:  # a count, a position or "checksum mismatch"
            raise CliError(f"cannot unlock the secrets service: {exc}") from None
        except ValueError as exc:  # text that is not valid Unicode; never quoted
            raise CliError(f"cannot unlock the secrets service: {exc}") from None
    return service
