"""Subprocess helpers shared by the end-to-end tests: a line-collecting ``Proc`` and a ``Runner`` base.

Imported like ``ssh_server_kit`` (the test modules put this directory on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ALKNET = [sys.executable, "-m", "alknet.cli"]
T = 20.0  # bound for one wait on a process


def clean_env(home: Path, *, keep_agent: bool = True, **extra: str) -> dict[str, str]:
    """The environment minus ``ALKNET_*`` and proxy settings, with ``ALKNET_HOME`` set to ``home``.

    ``keep_agent=False`` also drops ``SSH_AUTH_SOCK``; ``extra`` entries are added last.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ALKNET_") and "proxy" not in k.lower() and (keep_agent or k != "SSH_AUTH_SOCK")
    }
    env["ALKNET_HOME"] = str(home)
    env.update(extra)
    return env


class Proc:
    """A subprocess whose stdout and stderr lines are collected while it runs.

    ``on_exit`` is called once with the process after the first ``wait`` (or ``stop``) finishes.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        name: str | None = None,
        on_exit: Callable[[Proc], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name if name is not None else str(self.argv[:4])
        self.env = env
        self.on_exit = on_exit
        self.out: list[str] = []
        self.err: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._recorded = False

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read(self.proc.stdout, self.out)),
            asyncio.ensure_future(self._read(self.proc.stderr, self.err)),
        ]
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader, sink: list[str]) -> None:
        while line := await stream.readline():
            sink.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def matching(self, fragment: str, stream: str = "err") -> list[str]:
        return [line for line in (self.err if stream == "err" else self.out) if fragment in line]

    async def wait_line(
        self, fragment: str, *, count: int = 1, stream: str = "err", timeout: float = T
    ) -> str:
        """The ``count``-th line containing ``fragment``; fails when the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while len(self.matching(fragment, stream)) < count:
            if not self.running and all(r.done() for r in self._readers):
                raise AssertionError(f"{self.name} exited before {fragment!r}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {fragment!r} x{count} not seen in {timeout}s:\n{self.stderr}"
                )
            await asyncio.sleep(0.02)
        return self.matching(fragment, stream)[count - 1]

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = T) -> int:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._readers), 5)
            if not self._recorded:
                self._recorded = True
                if self.on_exit is not None:
                    self.on_exit(self)
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = T) -> int:
        if self.running:
            self.send(sig)
        return await self.wait(timeout)


def alknet(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    name: str | None = None,
    on_exit: Callable[[Proc], None] | None = None,
) -> Proc:
    """An (unstarted) ``alknet`` subprocess; ``argv`` are its arguments (``["serve", ...]``)."""
    return Proc(
        [*ALKNET, *argv], env, name=name if name is not None else str(list(argv[:1])), on_exit=on_exit
    )


class Runner:
    """Keeps the processes a test starts under ``tmp``; ``aclose`` kills whatever is left."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    async def aclose(self) -> None:
        for proc in self.procs:
            if proc.running:
                proc.send(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await proc.wait(10)
