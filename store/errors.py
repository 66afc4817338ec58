"""The store's error class, in its own module so that every store module can raise it
(:mod:`.layout` re-exports it; ``from radio.store.layout import StoreError`` keeps working)."""

from __future__ import annotations

from radio.errors import RadioError


class StoreError(RadioError):
    """A store that is missing, of another plan, unreachable, or does not hold what was asked for."""
