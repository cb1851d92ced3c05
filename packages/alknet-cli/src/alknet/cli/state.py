"""Resolving the configuration sources and the state directory for one-shot commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from alknet.cli.context import Context
from alknet.core.config.sources import ConfigSources, Overrides
from alknet.core.config.static import StaticConfig

__all__ = ["config_sources", "state_dir_for", "static_config"]


def config_sources(
    ctx: Context, args: argparse.Namespace | None = None, *, check_server_files: bool = False
) -> ConfigSources:
    """The flags (captured now), the environment and the ``--config`` file, in cli.md §13 precedence.

    With ``args`` every command flag named like a config setting is an override; without, only the global
    ``--config`` and ``--state-dir``.
    """
    if args is not None:
        overrides = Overrides.from_namespace(args)
    else:
        overrides = Overrides(config=ctx.config_path, state_dir=ctx.state_dir_flag)
    return ConfigSources(overrides, ctx.env, check_server_files=check_server_files)


def static_config(ctx: Context) -> StaticConfig:
    """The validated static configuration (the whole TOML file is checked: unknown keys exit 2)."""
    return config_sources(ctx).load_static()


def state_dir_for(ctx: Context) -> Path:
    """``--state-dir`` > ``ALKNET_HOME`` > top-level ``state_dir`` of ``--config`` > platform data dir."""
    return static_config(ctx).state_dir
