"""alknet.cli: the ``alknet`` command line. ``main(argv) -> int`` is the entry point."""

from importlib.metadata import version as _version

__version__ = _version("alknet-cli")
__all__ = ["__version__"]
