"""``rose up``, ``rose status`` and ``rose sumup-sandbox``: the local stack (ops.stack)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.table import Table

from ops.cli.common import console, fail
from ops.stack.pgserver import DEFAULT_PG_PORT, MAX_PORT, MIN_PORT
from ops.stack.processes import SUMUP_SANDBOX_PORT
from ops.stack.proxy import DEFAULT_PROXY_PORT


def up(
    fresh: Annotated[
        bool,
        typer.Option(
            help="Start from an empty embedded database (and SumUp sandbox). With "
            "--database-url, refused while that server holds orders."
        ),
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            metavar="DSN", help="Superuser DSN of an existing server instead of the embedded one."
        ),
    ] = None,
    pg_port: Annotated[
        int,
        typer.Option(
            min=MIN_PORT, max=MAX_PORT, metavar="PORT", help="Port of the embedded PostgreSQL."
        ),
    ] = (DEFAULT_PG_PORT),
    only: Annotated[
        str | None,
        typer.Option(metavar="SERVICES", help="Comma-separated services to run (default: all)."),
    ] = None,
    demo: Annotated[bool, typer.Option(help="Load demo data into empty tables.")] = True,
    port_offset: Annotated[
        int,
        typer.Option(
            metavar="N",
            help=(
                "Add this to every service's dev port (a second stack: with --pg-port, and its "
                "own home, ROSE_HOME=DIR)."
            ),
        ),
    ] = 0,
    proxy: Annotated[
        bool,
        typer.Option(
            help=(
                "A real Caddy in front: the public sites on http://rose.localhost:PORT (blog), "
                "http://market.rose.localhost:PORT and so on."
            )
        ),
    ] = False,
    proxy_port: Annotated[
        int,
        typer.Option(
            min=MIN_PORT, max=MAX_PORT, metavar="PORT", help="The proxy's port (with --proxy)."
        ),
    ] = DEFAULT_PROXY_PORT,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Processes per service (uvicorn workers on the service's port).",
        ),
    ] = 1,
    restore: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            file_okay=False,
            exists=True,
            help=(
                "Restore this rose db backup into the empty database first (with --fresh: "
                "delete this home's database; the SumUp sandbox's checkouts stay). No demo data."
            ),
        ),
    ] = None,
) -> None:
    """Run the whole system: database, provisioning, migrations, every service (restarted
    if it exits). Ctrl-C stops."""
    from ops.stack.up import StackError, StackOptions, run_stack

    # `--only ''` is a selection of nothing (refused), not the default of every service.
    wanted = None if only is None else [name.strip() for name in only.split(",") if name.strip()]
    options = StackOptions(
        fresh,
        database_url,
        pg_port,
        wanted,
        demo,
        port_offset,
        proxy_port=proxy_port if proxy else None,
        workers=workers,
        restore=restore,
    )
    try:
        code = run_stack(options)
    except StackError as exc:
        raise fail(str(exc)) from None
    if code:
        raise typer.Exit(code)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Where the running stack's database and services are."""
    from ops.stack.state import database_health, health, read_state

    state = read_state()
    if state is None:
        raise fail("no stack is running (start one with `rose up`)")
    services = state["services"]
    if as_json:
        print(json.dumps({"database_url": state["database_url"], "services": services}))
        return
    table = Table("service", "url", "health")
    database = state["database_url"]
    where = urlsplit(database)
    table.add_row("database", f"{where.hostname}:{where.port}", database_health(database))
    answers = health(services)
    for name, url in services.items():
        table.add_row(name, url, answers[name])
    console.print(table)


def sumup_sandbox(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=MIN_PORT, max=MAX_PORT, metavar="PORT", help="Port to listen on.")
    ] = SUMUP_SANDBOX_PORT,
    fd: Annotated[
        int | None,
        typer.Option(hidden=True, help="An inherited listening socket on PORT (rose up's)."),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Keep the checkouts in FILE, as SumUp keeps them, so a restart still knows "
            "them (rose up keeps them in its home; without it, in memory only).",
        ),
    ] = None,
) -> None:
    """Run the local SumUp sandbox (checkout API, hosted page, webhooks)."""
    from apps.sumup_sandbox.app import run
    from apps.sumup_sandbox.state import StateFileUnreadable

    if fd is None:
        # Bound here, before the app starts: a taken port is one line, not uvicorn's log.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server(
                (host, port),
                family=family,
                backlog=2048,
                # "::" takes IPv4 clients too where the system can (uvicorn's bind did not).
                dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
            )
        except OSError as exc:
            raise fail(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what listens "
                "there or choose another --port"
            ) from None
        fd = listener.detach()  # the sandbox's server owns it (and closes it) from here
    try:
        run(host=host, port=port, fd=fd, state_file=state_file)
    except StateFileUnreadable as exc:
        raise fail(str(exc)) from None
