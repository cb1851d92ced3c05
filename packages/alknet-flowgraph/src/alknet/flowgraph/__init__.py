"""alknet.flowgraph: package skeleton; the implementation arrives with its own issue."""

from importlib.metadata import version as _version

__version__ = _version("alknet-flowgraph")
__all__ = ["__version__"]
