"""Exceptions for misuse of the sans-I/O core.

They mean a bug in the caller, never a server fault: log and re-raise, never retry. Whatever the
server sends becomes an event instead.
"""

from __future__ import annotations

__all__ = ["InvalidState", "LocalProtocolError"]


class InvalidState(RuntimeError):
    """An input arrived in a state that does not accept it (e.g. a delta with no generation)."""


class LocalProtocolError(AssertionError):
    """An input broke its calling contract (e.g. stream time going backwards)."""
