if __name__ != "radio.store":  # one file, one module: the folder is the package radio.store
    raise ImportError(f"import radio.store, not {__name__}: store/ is importable only as radio.store")
