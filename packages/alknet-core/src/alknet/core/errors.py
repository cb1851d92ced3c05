"""Exception types shared by every alknet distribution.

Each error message is one line that names what is wrong (a path, a line number, a dotted config key,
an environment variable) and never contains secret material or tunnel destinations.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "IdentityBackendError", "KeyFormatError"]


class KeyFormatError(ValueError):
    """Key material that is not an OpenSSH Ed25519 key (or cannot be decrypted)."""


class ConfigError(ValueError):
    """A configuration or reload validation failure.

    ``errors`` lists every problem found (``"<source>:<line>: <message>"`` or ``"<dotted.key>: <message>"``);
    ``str()`` is the first one, so a one-line report is always possible.
    """

    errors: list[str]

    def __init__(self, errors: str | Iterable[str]) -> None:
        items = [errors] if isinstance(errors, str) else [str(e) for e in errors]
        if not items:
            items = ["invalid configuration"]
        self.errors = items
        super().__init__(items[0])

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0]
        return f"{self.errors[0]} (and {len(self.errors) - 1} more)"


class IdentityBackendError(RuntimeError):
    """An identity provider's backend failed (e.g. database unavailable); the attempt counts as rejected."""
