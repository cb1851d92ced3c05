"""The one-line ``--version`` text: every distribution's version and the installed extras."""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version

__all__ = ["version_line"]

_DISTS = ("alknet-core", "alknet-secret", "alknet-storage", "alknet-flowgraph")
_EXTRAS = (("quic", "aioquic"), ("iroh", "iroh"), ("acme", "acme"))


def _version_of(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    parts = ", ".join(f"{d} {_version_of(d)}" for d in _DISTS)
    extras = [name for name, module in _EXTRAS if importlib.util.find_spec(module) is not None]
    return f"alknet-cli {_version_of('alknet-cli')} ({parts}; extras: {', '.join(extras) or 'none'})"
