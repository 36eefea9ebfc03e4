"""What every ``rose`` command shares: the consoles, the one-line error, and the database a
command works on (``--database-url`` / ``ROSE_ADMIN_URL``, else the running stack's)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from apps.registry import CONTRACTS
from ops.db.topology import Topology

# Into a pipe or a file every line stays whole, as grep or a script reads it (a table's cells
# too, up to this many columns): Rich would lay them out for the terminal's width, or 80.
PIPE_WIDTH = 1000


def _console(stream: TextIO) -> Console:
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(
        stderr=stream is sys.stderr,
        highlight=False,
        soft_wrap=piped,
        width=PIPE_WIDTH if piped else None,
    )


console = _console(sys.stdout)
err_console = _console(sys.stderr)

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="DSN",
        envvar="ROSE_ADMIN_URL",
        help="Superuser DSN of an existing PostgreSQL server (default: the running stack's).",
    ),
]


ServiceArgument = Annotated[
    str, typer.Argument(metavar="SERVICE", help=f"One of {', '.join(sorted(CONTRACTS))}.")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    # One line, however narrow the terminal (soft_wrap: no inserted line breaks).
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def admin_url(database_url: str | None) -> str:
    from ops.stack.state import read_state

    if database_url:
        return database_url
    state = read_state()
    if state is None:
        raise fail("no database: start the stack with `rose up` or pass --database-url")
    return str(state["database_url"])


def topology_of(database_url: str | None) -> Topology:
    return Topology.single_server(admin_url(database_url))


def superuser_topology(
    database_url: str | None, command: str, *, sets_passwords: bool = False
) -> Topology:
    """``topology_of`` for a command that needs a superuser (every ``rose db`` and ``rose split``
    command that connects): a lesser role is refused in one line before anything is read. One
    that ``sets_passwords`` (provisioning) is refused a server elsewhere with ROSE_ENV unset."""
    from apps.common.settings import ConfigError
    from ops.db.connections import NotASuperuser, require_superusers
    from ops.db.topology import refuse_development_elsewhere

    topology = topology_of(database_url)
    if sets_passwords:
        try:
            refuse_development_elsewhere(topology)
        except ConfigError as exc:
            raise fail(str(exc)) from None
    try:
        require_superusers(topology, command)
    except NotASuperuser as exc:
        raise fail(str(exc)) from None
    return topology
