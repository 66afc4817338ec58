"""The feature store, the whole contract between the phases: plan, write, read, verify, inspect (Zarr + parquet)."""

if __name__ != "radio.store":  # one file, one module: the folder is the package radio.store
    raise ImportError(f"import radio.store, not {__name__}: store/ is importable only as radio.store")
