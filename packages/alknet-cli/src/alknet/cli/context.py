"""What every command receives: parsed global flags, the environment captured at start, output helpers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["Context"]


@dataclass
class Context:
    config_path: Path | None
    state_dir_flag: Path | None
    log_level: str
    debug: bool
    quiet: bool
    log_time: str
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Context:
        env = dict(os.environ if env is None else env)
        config = getattr(args, "config", None) or env.get("ALKNET_CONFIG") or None
        debug = bool(getattr(args, "debug", False)) or env.get("ALKNET_DEBUG", "") == "1"
        level = (
            getattr(args, "log_level", None)
            or ("debug" if debug else None)
            or env.get("ALKNET_LOG_LEVEL")
            or "info"
        )
        if level not in ("debug", "info", "warning", "error"):
            from alknet.core.errors import ConfigError

            raise ConfigError("ALKNET_LOG_LEVEL: expected one of debug, info, warning, error")
        state_dir = getattr(args, "state_dir", None)
        return cls(
            config_path=Path(config).expanduser() if config else None,
            state_dir_flag=Path(state_dir).expanduser() if state_dir else None,
            log_level=level,
            debug=debug,
            quiet=bool(getattr(args, "quiet", False)),
            log_time=str(getattr(args, "log_time", "auto")),
            env=env,
        )

    @property
    def stdout(self) -> TextIO:
        return sys.stdout

    def out(self, line: str) -> None:
        """A result line on stdout."""
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def info(self, line: str) -> None:
        """Informational stdout output, suppressed by --quiet."""
        if not self.quiet:
            self.out(line)

    def warn(self, text: str) -> None:
        sys.stderr.write(f"alknet: warning: {text}\n")
