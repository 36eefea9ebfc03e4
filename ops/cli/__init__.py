"""``rose``: the command line, a thin layer over the rooms of ``ops`` (one typer app per room)."""

from ops.cli.main import app, main

__all__ = ["app", "main"]
