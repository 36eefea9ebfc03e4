"""``rose``: run, provision, inspect and operate the rose-ash services."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from apps.common.services import SERVICES, service_spec
from apps.common.settings import ConfigError
from ops.credentials import Credentials, rose_home
from ops.split import split_app

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Databases, roles, FDW edges and migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(split_app, name="split")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_PG_PORT = 55432
SUMUP_SANDBOX_PORT = 8099
STATE_FILE = "stack.json"

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="ROSE_ADMIN_URL",
        help="Superuser DSN of an existing PostgreSQL server (default: the running stack's).",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    # One line, however narrow the terminal (soft_wrap: no inserted line breaks).
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _state_path() -> Path:
    return rose_home() / STATE_FILE


def _admin_url(database_url: str | None) -> str:
    from ops.stack import read_state

    if database_url:
        return database_url
    state = read_state(_state_path())
    if state is None:
        raise fail("no database: start the stack with `rose up` or pass --database-url")
    return str(state["database_url"])


# -- rose up ---------------------------------------------------------------------------------
@app.command()
def up(
    fresh: Annotated[bool, typer.Option(help="Start from an empty embedded database.")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(help="Superuser DSN of an existing server instead of the embedded one."),
    ] = None,
    pg_port: Annotated[int, typer.Option(help="Port of the embedded PostgreSQL.")] = (
        DEFAULT_PG_PORT
    ),
    only: Annotated[
        str | None, typer.Option(help="Comma-separated services to run (default: all).")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Load demo data into empty tables.")] = True,
    port_offset: Annotated[
        int, typer.Option(help="Add this to every service's dev port (to run a second stack).")
    ] = 0,
) -> None:
    """Run the whole system: database, provisioning, migrations, every service. Ctrl-C stops."""
    from ops.demo import seed_demo_data
    from ops.migrate import migrate, services_with_migrations
    from ops.pgserver import LocalPostgres, port_is_free
    from ops.provision import provision_edges, provision_services
    from ops.stack import (
        LogSink,
        ProcessGroup,
        available_services,
        read_state,
        service_environment,
        write_state,
    )
    from ops.topology import Topology

    home = rose_home()
    home.mkdir(parents=True, exist_ok=True)
    running = read_state(_state_path())
    if running is not None:
        raise fail(f"a stack already runs (pid {running['pid']}); stop it first")
    names = available_services()
    if only:
        wanted = [name.strip() for name in only.split(",") if name.strip()]
        for name in wanted:
            service_spec(name)
        names = [name for name in names if name in wanted]
    ports = {name: SERVICES[name].dev_port + port_offset for name in names}
    sandbox_port = SUMUP_SANDBOX_PORT + port_offset
    busy = [
        f"{name} ({port})"
        for name, port in [*ports.items(), ("sumup sandbox", sandbox_port)]
        if not port_is_free(port)
    ]
    if busy:
        raise fail(f"ports in use: {', '.join(busy)}")

    credentials = Credentials.for_environment(home)
    sink = LogSink(home / "rose.log")
    say = lambda message: sink.write("rose", message)  # noqa: E731
    embedded: LocalPostgres | None = None
    stop_requested = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    group: ProcessGroup | None = None
    try:
        if database_url is None:
            embedded = LocalPostgres(home / "pgdata", pg_port, credentials.superuser_password())
            if fresh:
                say("--fresh: removing the embedded database")
                embedded.destroy()
            say(f"starting embedded PostgreSQL on 127.0.0.1:{pg_port} ({embedded.data_dir})")
            embedded.start()
            database_url = embedded.superuser_url()
        topology = Topology.single_server(database_url)
        provision_services(topology, credentials, say=say)
        migrated = migrate({name: topology.admin_url(name) for name in services_with_migrations()})
        say(f"migrated: {', '.join(migrated)}")
        provision_edges(topology, credentials, say=say)
        if demo:
            seed_demo_data(topology, names, say)

        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        environment = service_environment(
            topology, credentials, ports, extra={"ORDERS_SUMUP_BASE_URL": sandbox_url}
        )
        group = ProcessGroup(sink, environment)
        # The local SumUp sandbox stands in for SumUp (orders' SDK points at it).
        group.start(
            "sumup",
            sandbox_port,
            [sys.executable, "-m", "ops.cli", "sumup-sandbox", "--port", str(sandbox_port)],
        )
        for name in names:
            group.start_service(name, ports[name])
        not_ready = group.wait_ready(["sumup"], timeout=30, path="/_sandbox/controls")
        not_ready += group.wait_ready(names, timeout=60)
        if not_ready:
            for name in not_ready:
                for line in group.processes[name].last_lines[-10:]:
                    sink.write(name, line)
            raise fail(f"not ready: {', '.join(not_ready)} (see {home / 'rose.log'})")
        urls = {name: group.processes[name].url for name in names}
        write_state(_state_path(), database_url, urls)
        for name in names:
            say(f"{name:<10} {urls[name]}  ready")
        say(f"{'sumup':<10} {sandbox_url}  SumUp sandbox (hosted checkout pages, webhooks)")
        say(f"log: {home / 'rose.log'}; Ctrl-C stops everything")
        while not stop_requested:
            dead = group.exited()
            if dead:
                for entry in dead:
                    code = entry.process.returncode if entry.process else None
                    say(f"{entry.name} exited with code {code}; stopping the stack")
                raise typer.Exit(1)
            time.sleep(0.3)
        say("stopping")
    finally:
        if group is not None:
            group.stop()
        _state_path().unlink(missing_ok=True)
        if embedded is not None:
            embedded.stop()
            say("embedded PostgreSQL stopped")
        sink.close()


# -- rose status -----------------------------------------------------------------------------
@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Where the running stack's database and services are."""
    from ops.stack import read_state

    state = read_state(_state_path())
    if state is None:
        raise fail("no stack is running (start one with `rose up`)")
    services: dict[str, str] = state["services"]  # type: ignore[assignment]
    if as_json:
        print(json.dumps({"database_url": state["database_url"], "services": services}))
        return
    table = Table("service", "url", "health")
    with httpx.Client(timeout=2.0) as client:
        for name, url in services.items():
            try:
                health = "ready" if client.get(url + "/readyz").status_code == 200 else "not ready"
            except httpx.HTTPError:
                health = "down"
            table.add_row(name, url, health)
    console.print(table)


# -- rose data / rose action -----------------------------------------------------------------
def _internal_client() -> Any:
    from apps.common.internal_client import InternalClient
    from ops.stack import read_state

    state = read_state(_state_path())
    urls = dict(state["services"]) if state else {}  # type: ignore[call-overload]
    for name in SERVICES:
        env_url = os.environ.get(f"INTERNAL_URL_{name.upper()}")
        if env_url:
            urls[name] = env_url
    secret = os.environ.get("INTERNAL_SECRET") or Credentials.for_environment().internal_secret()
    return InternalClient(caller="rose-cli", secret=secret, base_urls=urls)


def _call_internal(call: Any) -> Any:
    from apps.common.internal_client import InternalCallError

    async def run() -> Any:
        client = _internal_client()
        try:
            return await call(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except InternalCallError as exc:
        detail = json.dumps(exc.problem) if exc.problem else str(exc)
        raise fail(f"{exc} {detail if exc.problem else ''}".strip()) from None


def _run_internal(call: Any) -> None:
    print(json.dumps(_call_internal(call), indent=2))


def _parse_params(pairs: list[str]) -> dict[str, str | list[str]]:
    params: dict[str, str | list[str]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise fail(f"parameters are key=value, not {pair!r}")
        key, value = pair.split("=", 1)
        if key in params:
            existing = params[key]
            params[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            params[key] = value
    return params


@app.command()
def data(
    service: str,
    name: str,
    params: Annotated[list[str] | None, typer.Argument(help="key=value ...")] = None,
) -> None:
    """Signed internal data call: rose data relations get-children parent_type=page parent_id=1"""
    service_spec(service)
    query = _parse_params(params or [])
    _run_internal(lambda client: client.fetch_data(service, name, query))


@app.command()
def action(
    service: str,
    name: str,
    payload: Annotated[str, typer.Argument(help="JSON payload")],
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
) -> None:
    """Signed internal action call: rose action relations attach-child '{...}'"""
    service_spec(service)
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise fail(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise fail("payload must be a JSON object")
    _run_internal(
        lambda client: client.call_action(service, name, body, idempotency_key=idempotency_key)
    )


# -- rose db ---------------------------------------------------------------------------------
@db_app.command("provision")
def db_provision(
    database_url: DatabaseUrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact SQL it would run; change nothing.")
    ] = False,
    prune: Annotated[
        bool, typer.Option(help="Drop roles of rose's namespace that db/ does not declare.")
    ] = False,
) -> None:
    """Make the cluster equal to db/: create what is missing, revoke and reset what is extra."""
    from ops.provision import provision
    from ops.sqlfiles import ConvergeError
    from ops.topology import Topology

    topology = Topology.single_server(_admin_url(database_url))
    show = (lambda text: print(text, flush=True)) if dry_run else (lambda text: None)
    try:
        report = provision(
            topology, Credentials.for_environment(), say=show, dry_run=dry_run, prune=prune
        )
    except (ConfigError, ConvergeError) as exc:
        raise fail(str(exc)) from None
    if not dry_run:
        for change in report.statements:
            print(change.line)
    for change in report.left:
        err_console.print(f"left: {change.line}", markup=False, soft_wrap=True)
    console.print(report.summary(), markup=False, soft_wrap=True)
    if report.left:
        raise typer.Exit(1)


@db_app.command("migrate")
def db_migrate(
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Upgrade every service's database to its latest migration, then converge (provision)."""
    from ops.migrate import migrate, services_with_migrations
    from ops.provision import provision_edges
    from ops.topology import Topology

    topology = Topology.single_server(_admin_url(database_url))
    services = [service_spec(service).name] if service else services_with_migrations()
    migrated = migrate({name: topology.admin_url(name) for name in services}, services)
    console.print(f"migrated: {', '.join(migrated)}")
    provision_edges(topology, Credentials.for_environment(), say=print)


@db_app.command("check")
def db_check(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Compare the cluster with what db/ declares: one line per difference; exit 1 on any."""
    from ops.dbcheck import check
    from ops.topology import Topology

    topology = Topology.single_server(_admin_url(database_url))
    credentials = Credentials.for_environment(generate=False)
    try:
        differences, notes = check(topology, credentials=credentials)
    except ConfigError as exc:
        differences, notes = check(topology)
        notes.append(f"role passwords not compared: {exc}")
    if as_json:
        print(json.dumps({"ok": not differences, "differences": differences, "notes": notes}))
    else:
        for note in notes:
            err_console.print(f"note: {note}", markup=False, soft_wrap=True, style="dim")
        for line in differences:
            print(line)
        if not differences:
            console.print(
                "ok: roles, databases, privileges and FDW edges as db/ declares", markup=False
            )
    if differences:
        raise typer.Exit(1)


@db_app.command("edges")
def db_edges(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Every FDW edge: consumer, provider, views and columns, reader role, server options, and
    whether each foreign table answers (read as the consumer's app role)."""
    from ops.dbcheck import describe_edges
    from ops.topology import Topology

    edges = describe_edges(Topology.single_server(_admin_url(database_url)))
    if as_json:
        print(json.dumps(edges, indent=2))
        return
    for edge in edges:
        state = "reachable" if edge["reachable"] else "NOT reachable"
        print(f"{edge['consumer']} <- {edge['provider']}  reader {edge['reader']}  {state}")
        options = edge["server_options"] or {}
        listed = ", ".join(f"{key}={value}" for key, value in options.items())  # type: ignore[union-attr]
        print(f"  server {edge['server']}: {listed or 'missing'}")
        for view in edge["views"]:  # type: ignore[attr-defined]
            answer = "ok" if view["reachable"] else f"error: {view['error']}"
            print(f"  {edge['provider']}.{view['view']} ({answer})")
            print(f"    {', '.join(view['columns'])}")


DBA_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
AsRoleOption = Annotated[
    str, typer.Option("--as", help="owner, app or reader:<consumer> (default: owner).")
]


def _dba_session(
    ctx: typer.Context, client: str, service: str, as_role: str, url: str | None
) -> None:
    from ops.dba import DbaError, login_for, pgcli_binary, psql_binary, run_client
    from ops.topology import Topology

    try:
        service_spec(service)
        login = login_for(
            Topology.single_server(_admin_url(url)), Credentials.for_environment(), service, as_role
        )
        binary = psql_binary() if client == "psql" else pgcli_binary()
    except (DbaError, ValueError, ConfigError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(run_client(binary, login, ctx.args))


@db_app.command("psql", context_settings=DBA_CONTEXT)
def db_psql(
    ctx: typer.Context,
    service: str,
    as_role: AsRoleOption = "owner",
    database_url: DatabaseUrlOption = None,
) -> None:
    """psql in a service's database over TCP (extra arguments go to psql, e.g. -c 'SQL').
    The password goes through a 0600 passfile, never the command line."""
    _dba_session(ctx, "psql", service, as_role, database_url)


@db_app.command("pgcli", context_settings=DBA_CONTEXT)
def db_pgcli(
    ctx: typer.Context,
    service: str,
    as_role: AsRoleOption = "owner",
    database_url: DatabaseUrlOption = None,
) -> None:
    """pgcli (the optional dba extra) in a service's database, like `rose db psql`."""
    _dba_session(ctx, "pgcli", service, as_role, database_url)


# -- rose env-template -----------------------------------------------------------------------
orders_app = typer.Typer(help="Orders that need a person.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")


@orders_app.command("attention")
def orders_attention(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Orders a person must look at: flagged payments, money owed back, refunds SumUp refused."""

    async def fetch(client: Any) -> Any:
        return await client.fetch_data("orders", "attention")

    rows = _call_internal(fetch)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("nothing needs attention")
        return
    table = Table("order", "status", "total", "why", "refunds")
    for row in rows:
        why = row["flag_reason"] if row["flagged"] else ""
        refunds = "; ".join(
            f"{refund['amount']} {refund['currency']} {refund['status']}: {refund['reason']}"
            + (f" ({refund['last_error']})" if refund["last_error"] else "")
            for refund in row["refunds"]
        )
        table.add_row(
            str(row["order_id"]),
            "flagged" if row["flagged"] else row["status"],
            f"{row['total']} {row['currency']}",
            why,
            refunds,
        )
    console.print(table)


@app.command("env-template")
def env_template() -> None:
    """Print every secret a production deployment needs, freshly generated, as an env file."""
    import secrets as random_secrets

    from ops.credentials import role_env_name
    from ops.manifest import load_edges

    roles = [SERVICES[name].app_role for name in SERVICES]
    roles += sorted({edge.reader_role for edge in load_edges()})
    print("# rose-ash production secrets (compose.yaml reads this as .env). Keep it private.")
    print(f"ROSE_DB_SUPERUSER_PASSWORD={random_secrets.token_urlsafe(24)}")
    print(f"INTERNAL_SECRET={random_secrets.token_urlsafe(32)}")
    print(f"SESSION_SECRET={random_secrets.token_urlsafe(32)}")
    for role in roles:
        print(f"{role_env_name(role)}={random_secrets.token_urlsafe(24)}")


# -- rose sumup-sandbox ----------------------------------------------------------------------
@app.command("sumup-sandbox")
def sumup_sandbox(
    host: str = "127.0.0.1",
    port: int = 8099,
) -> None:
    """Run the local SumUp sandbox (checkout API, hosted page, webhooks)."""
    from apps.sumup_sandbox.app import run

    run(host=host, port=port)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
