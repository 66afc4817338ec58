"""Phase 2: train the student against the store's cached targets, then export it."""

if __name__ != "radio.distill":  # one file, one module: the folder is the package radio.distill
    raise ImportError(f"import radio.distill, not {__name__}: distill/ is importable only as radio.distill")
