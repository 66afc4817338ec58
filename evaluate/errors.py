"""The one error type of evaluation: a request that cannot be evaluated as asked."""

from __future__ import annotations

from radio.errors import RadioError


class EvalError(RadioError):
    """Bad evaluation input (no images, an unknown adaptor, a teacher without a text tower, ...);
    the CLI prints it as one line and exits 2."""
