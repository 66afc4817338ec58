"""Evaluation: what the paper measures (fidelity, scale equivariance, kNN, zero-shot, pictures)."""

if __name__ != "radio.evaluate":  # one file, one module: the folder is the package radio.evaluate
    raise ImportError(f"import radio.evaluate, not {__name__}: evaluate/ is importable only as radio.evaluate")
