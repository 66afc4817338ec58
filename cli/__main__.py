"""`python -m radio.cli ...` (e.g. under torchrun) runs the same command as `radio ...`."""

from .main import main

main()
