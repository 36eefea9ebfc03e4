"""``rose db``: databases, roles, FDW edges, migrations, backups (ops.db); ``rose env-template``."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from apps.common.settings import ConfigError
from apps.registry import service_spec
from ops.cli.common import (
    DatabaseUrlOption,
    ServiceArgument,
    console,
    err_console,
    fail,
    superuser_topology,
    topology_of,
)
from ops.db.credentials import Credentials

db_app = typer.Typer(
    help="Databases, roles, FDW edges, migrations and backups.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def require_role_passwords() -> None:
    """Production generates nothing: name every missing role password at once, in one line."""
    from ops.db.credentials import missing_role_passwords, rose_environment

    if rose_environment() == "prod":
        missing = missing_role_passwords()
        if missing:
            raise fail(f"ROSE_ENV=prod: missing required settings {', '.join(missing)}")


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
    from ops.db.exclusive import converging_alone
    from ops.db.provision import provision, refuse_missing_monolith_roles
    from ops.db.sqlfiles import ConvergeError

    topology = superuser_topology(database_url, "rose db provision", sets_passwords=True)
    require_role_passwords()

    def say_now(text: str) -> None:
        print(text, flush=True)

    show = say_now if dry_run else (lambda text: None)
    try:
        # The dry run too: it shows what a real run would do, which is to refuse.
        refuse_missing_monolith_roles(topology)
        with ExitStack() as stack:
            if not dry_run:
                # Another provisioning or migration of the server first (it says it waits).
                stack.enter_context(converging_alone(topology, say_now))
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


@db_app.command("print-psql")
def db_print_psql(
    file: Annotated[
        str | None,
        typer.Argument(metavar="[FILE]", help="Only this file's, e.g. db/schemas/roles.sql."),
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Print the psql commands that run db/'s SQL by hand, with every value rose db provision
    passes (each file converges to exactly what it is given: partial values revoke or drop the
    rest). Passwords are left out: none is compared or changed. Each names its file where this
    rose reads it (a checkout's db/ or the installed package's), so they run from any
    directory; the superuser's password in PGPASSWORD or ~/.pgpass."""
    from ops.db.provision import psql_commands

    only = None
    if file is not None:
        only = file.removeprefix("./").removeprefix("db/")
    try:
        commands = psql_commands(topology_of(database_url), only)
    except ValueError as exc:
        raise fail(str(exc)) from None
    for line in commands:
        print(line)


@db_app.command("migrate")
def db_migrate(
    service: Annotated[
        str | None, typer.Option(metavar="SERVICE", help="Only this service.")
    ] = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Upgrade every service's database to its latest migration, then converge (provision);
    first provision the services whose database, role or schema is missing (only those)."""
    from ops.db.lifecycle import converge_databases, missing_for_migrations
    from ops.db.migrate import MigrateError, services_with_migrations
    from ops.db.sqlfiles import ConvergeError

    try:
        services = [service_spec(service).name] if service else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    topology = superuser_topology(database_url, "rose db migrate", sets_passwords=True)
    require_role_passwords()
    missing = missing_for_migrations(topology, services or services_with_migrations())
    if missing:
        lacking = [item for items in missing.values() for item in items]
        verb = "is" if len(lacking) == 1 else "are"
        print(f"provisioning {', '.join(missing)} first: {', '.join(lacking)} {verb} missing")
    try:
        converge_databases(
            topology,
            Credentials.for_environment(),
            services,
            provision_first=list(missing),
            say=print,
        )
    except (MigrateError, ConfigError, ConvergeError) as exc:
        raise fail(str(exc)) from None


@db_app.command("check")
def db_check(
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Compare the cluster with what db/ declares: one line per difference; exit 1 on any."""
    from ops.db.check import check_as_declared
    from ops.db.sqlfiles import ConvergeError

    try:
        differences, notes = check_as_declared(superuser_topology(database_url, "rose db check"))
    except ConvergeError as exc:  # a server it cannot compare with db/ at all (too old)
        raise fail(str(exc)) from None
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
    from ops.db.check import describe_edges

    edges = describe_edges(superuser_topology(database_url, "rose db edges"))
    if as_json:
        print(json.dumps(edges, indent=2))
        return
    for edge in edges:
        state = "reachable" if edge["reachable"] else "NOT reachable"
        print(f"{edge['consumer']} <- {edge['provider']}  reader {edge['reader']}  {state}")
        options = edge["server_options"] or {}
        listed = ", ".join(f"{key}={value}" for key, value in options.items())
        print(f"  server {edge['server']}: {listed or 'missing'}")
        for view in edge["views"]:
            answer = "ok" if view["reachable"] else f"error: {view['error']}"
            print(f"  {edge['provider']}.{view['view']} ({answer})")
            print(f"    {', '.join(view['columns'])}")


BackupDirectory = Annotated[
    Path, typer.Argument(metavar="DIRECTORY", help="A backup's directory (manifest.json + dumps).")
]


@db_app.command("backup")
def db_backup(
    directory: BackupDirectory,
    database_url: DatabaseUrlOption = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            metavar="N",
            help="Then keep only the N newest whole backups beside it (this one included).",
        ),
    ] = None,
) -> None:
    """Every service database's rows into DIRECTORY (new or empty): one pg_dump per database and
    a manifest of each table's row count and checksum, read in the dump's own snapshot."""
    from ops.db.backup import MANIFEST, BackupError, back_up, check_keep, prune_backups

    topology = superuser_topology(database_url, "rose db backup")
    try:
        if keep is not None:
            check_keep(keep)  # before anything is written
        outcome = back_up(topology, directory, say=print)
        pruned = ([], []) if keep is None else prune_backups(directory.parent, keep, directory)
    except BackupError as exc:
        raise fail(str(exc)) from None
    for note in outcome.notes:
        err_console.print(f"note: {note}", markup=False, soft_wrap=True, style="dim")
    removed, left = pruned
    for path in removed:
        print(f"removed the older backup {path}")
    for path in left:
        why = (
            "its manifest.json is not one of a rose backup this release reads"
            if (path / MANIFEST).exists()
            else "no manifest.json"
        )
        err_console.print(
            f"note: {path} is not a whole backup ({why}): left alone",
            markup=False,
            soft_wrap=True,
            style="dim",
        )
    console.print(
        f"ok: backup in {directory} ({directory / 'manifest.json'})", markup=False, soft_wrap=True
    )


@db_app.command("restore")
def db_restore(
    directory: BackupDirectory,
    database_url: DatabaseUrlOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the backup and the server, say what it would do."),
    ] = False,
) -> None:
    """Put a backup's rows onto a server with none yet: check every file, provision, migrate to
    the backup's revision, pg_restore each database, verify every table against the manifest,
    then migrate to this release and check the cluster is as db/ declares."""
    from alembic.util import CommandError

    from ops.db.backup import BackupError, restore
    from ops.db.migrate import MigrateError
    from ops.db.sqlfiles import ConvergeError

    topology = superuser_topology(database_url, "rose db restore", sets_passwords=True)
    require_role_passwords()
    try:
        outcome = restore(
            topology, Credentials.for_environment(), directory, say=print, dry_run=dry_run
        )
    except (BackupError, ConfigError, ConvergeError, CommandError, MigrateError) as exc:
        raise fail(str(exc)) from None
    for note in outcome.notes:
        err_console.print(f"note: {note}", markup=False, soft_wrap=True, style="dim")
    if dry_run:
        console.print("dry run: the backup and the server pass every check; changed nothing")
        return
    console.print(
        "ok: every database restored and verified; roles, privileges and FDW edges as db/ declares",
        markup=False,
    )


DBA_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
AsRoleOption = Annotated[
    str,
    typer.Option("--as", metavar="ROLE", help="owner, app or reader:<consumer> (default: owner)."),
]


def _dba_session(
    ctx: typer.Context, client: str, service: str, as_role: str, url: str | None
) -> None:
    from ops.db.dba import DbaError, login_for, pgcli_binary, psql_binary, run_client

    try:
        service_spec(service)
        login = login_for(topology_of(url), Credentials.for_environment(), service, as_role)
        binary = psql_binary() if client == "psql" else pgcli_binary()
    except (DbaError, ValueError, ConfigError) as exc:
        raise fail(str(exc)) from None
    try:
        code = run_client(binary, login, ctx.args)
    except OSError as exc:
        # A program the kernel cannot run (Exec format error, a directory, ...): a line.
        named = "ROSE_PSQL=" if client == "psql" and os.environ.get("ROSE_PSQL") else ""
        raise fail(f"{named}{binary}: cannot run it: {exc.strerror or exc}") from None
    raise typer.Exit(code)


@db_app.command("psql", context_settings=DBA_CONTEXT)
def db_psql(
    ctx: typer.Context,
    service: ServiceArgument,
    as_role: AsRoleOption = "owner",
    database_url: DatabaseUrlOption = None,
) -> None:
    """psql in a service's database over TCP (extra arguments go to psql, e.g. -c 'SQL').
    The password goes through a 0600 passfile, never the command line."""
    _dba_session(ctx, "psql", service, as_role, database_url)


@db_app.command("pgcli", context_settings=DBA_CONTEXT)
def db_pgcli(
    ctx: typer.Context,
    service: ServiceArgument,
    as_role: AsRoleOption = "owner",
    database_url: DatabaseUrlOption = None,
) -> None:
    """pgcli (the optional dba extra) in a service's database, like rose db psql."""
    _dba_session(ctx, "pgcli", service, as_role, database_url)


def env_template() -> None:
    """Print every secret a production deployment needs, freshly generated, as an env file."""
    from ops.db.credentials import production_env_template

    print(production_env_template(), end="")
