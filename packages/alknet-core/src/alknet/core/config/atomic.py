"""``AtomicRef``: a single reference that readers load without a lock and writers replace whole."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["AtomicRef"]

T = TypeVar("T")


class AtomicRef(Generic[T]):
    """Holds one immutable value. ``load()`` is one attribute read; ``store``/``swap`` are one assignment.

    Code that makes one decision calls ``load()`` once and uses that snapshot throughout.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def load(self) -> T:
        return self._value

    def store(self, value: T) -> None:
        self._value = value

    def swap(self, value: T) -> T:
        old, self._value = self._value, value
        return old

    def __repr__(self) -> str:
        return f"AtomicRef({type(self._value).__name__})"
