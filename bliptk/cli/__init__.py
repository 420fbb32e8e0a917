"""The ``bliptk`` command (also ``python -m bliptk``): [`main()`][bliptk.cli.main.main] and one module
per command."""

from .main import main

__all__ = ["main"]
