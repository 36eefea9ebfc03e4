"""rose: run, provision, inspect and operate the rose-ash services."""

from __future__ import annotations

import io
import sys

import psycopg
import typer
from rich.markup import escape

from apps.common.settings import ConfigError
from ops.cli import calls, db, outbox, proxy, split, stack
from ops.cli.common import err_console
from ops.db.credentials import rose_environment

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    # Plain help (no "<bool>" beside flags); an unexpected error shows no local variables.
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)
# `rose --help` lists the commands in this order, then the groups.
app.command()(stack.up)
app.command()(stack.status)
app.command()(calls.data)
app.command()(calls.action)
app.command("env-template")(db.env_template)
app.command("sumup-sandbox")(stack.sumup_sandbox)
app.command()(proxy.caddyfile)
app.add_typer(db.db_app, name="db")
app.add_typer(split.split_app, name="split")
app.add_typer(calls.orders_app, name="orders")
app.add_typer(outbox.outbox_app, name="outbox")


def _line_by_line() -> None:
    """stdout and stderr written through line by line, into a pipe or a file too: Python
    buffers stdout in blocks there, so `rose ... 2>&1 | tee notes` showed every stderr line
    (a note, a "left:", an error) before the stdout lines printed ahead of it, which waited in
    the buffer until the process ended."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def main() -> None:  # pragma: no cover - console entry point
    _line_by_line()
    try:
        # Before any command reads it: a ROSE_ENV that is no environment is refused at once.
        rose_environment()
        app()
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except psycopg.OperationalError as exc:
        # A server that does not answer, refuses the login or went away: what the DBA acts on
        # is libpq's own words, on one line (they come indented over several).
        message = " ".join(str(exc).split())
        err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        sys.exit(1)
