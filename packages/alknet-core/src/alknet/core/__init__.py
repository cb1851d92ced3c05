"""alknet.core: the shared types and machinery of alknet.

This module imports nothing heavy: asyncssh, aioquic and iroh are only imported by the modules that need them.
"""

from importlib.metadata import version as _version

__version__ = _version("alknet-core")
__all__ = ["__version__"]
