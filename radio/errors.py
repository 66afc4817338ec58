"""The one root of every error a user can cause: :class:`RadioError`.

Each part keeps its own error class (``ConfigError``, ``StoreError``, ``TeacherError``, ...) and
derives it from :class:`RadioError`; the CLI catches ``RadioError`` once and prints its message
(one line per line of the message, prefixed ``error:``) with exit status 2, never a traceback.
A new error class needs nothing else. It lives in the ``radio`` package itself, which imports
nothing, so every part (``store`` included) may import it without breaking the import order.
"""

from __future__ import annotations


class RadioError(ValueError):
    """A request that cannot run as given (bad config, input, store or weights): exit 2, one line.

    A ``ValueError`` too, so code that already catches ``ValueError`` keeps working.
    """


__all__ = ["RadioError"]
