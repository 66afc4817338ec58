"""``stages[].compile``: the student under ``torch.compile``, or eager when compiling fails.

``torch.compile`` compiles lazily, at the first call (and again for each new input shape), so a
failure shows up there, not when wrapping. :class:`CompileOrEager` runs the compiled model; the
first call that raises runs the eager model instead, prints one ``note:`` line and stays eager
(an error of the model itself raises again from the eager call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, Literal

import torch
from torch import nn


def compile_on(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """``auto``: compile on CUDA (where the fused kernels pay), not on CPU (compile time dominates)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


class CompileOrEager(nn.Module):
    """``model`` compiled, falling back to ``model`` itself; ``log``: where the note goes (None: nowhere)."""

    def __init__(self, model: nn.Module, log: IO[str] | None):
        super().__init__()
        self.eager = model
        # not a submodule: it wraps the same parameters, which must be registered once
        self._compiled: Callable[..., Any]
        object.__setattr__(self, "_compiled", torch.compile(model))
        self.log = log
        self.failed: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 (any backend failure; the eager call re-raises a real error)
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self.failed = f"{type(e).__name__}: {first}"
                if self.log is not None:
                    print(f"note: torch.compile failed ({self.failed}); training eagerly", file=self.log)
        return self.eager(*args, **kwargs)
