"""The input shards: webdataset tars (img2dataset / DataComp), their images, crops, counts and sample data."""

if __name__ != "radio.shards":  # one file, one module: the folder is the package radio.shards
    raise ImportError(f"import radio.shards, not {__name__}: shards/ is importable only as radio.shards")
