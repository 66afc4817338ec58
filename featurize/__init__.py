"""Phase 1: run every teacher over the input shards (Ray) and write targets into the store."""

if __name__ != "radio.featurize":  # one file, one module: the folder is the package radio.featurize
    raise ImportError(f"import radio.featurize, not {__name__}: featurize/ is importable only as radio.featurize")
