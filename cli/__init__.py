"""The `radio` command line: one module per command, the only place that prints or exits."""

if __name__ != "radio.cli":  # one file, one module: the folder is the package radio.cli
    raise ImportError(f"import radio.cli, not {__name__}: cli/ is importable only as radio.cli")
