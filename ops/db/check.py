"""``rose db check``: compare what exists in PostgreSQL with what ``db/`` declares.

One line per difference, from three sources:
- every difference ``rose db provision`` would repair, or leaves to a person: its SQL files run in
  dry-run mode (:mod:`ops.db.provision`), so check and provision can never disagree; that covers
  roles (attributes, settings, memberships, unknown ones), databases (unknown ones, the maintenance
  and template databases), schemas, tables, columns, default privileges, export views (declared
  columns, undeclared ones, secrets), foreign servers, user mappings and foreign tables,
  row-level security (policies, enabled or forced) and triggers not enabled;
- role passwords, when the credentials are at hand;
- each service's Alembic version table holding a revision its migrations know, and at its head;
- each service's tables and columns, and each column's type and nullability, as its models
  declare them (:mod:`ops.db.schema_drift`);
- each service's indexes, constraints, column defaults and identity columns, as its migrations
  make them at head (:mod:`ops.db.schema_shape`, ``db/migrations/<service>/shape.toml``);
- each edge working end to end: a query through every foreign table as the consumer's app role
  (a broken reader password, a missing grant or a missing view shows up only there).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypedDict

import psycopg

from apps.common.settings import ConfigError
from apps.registry import SERVICES, service_spec
from ops.db.connections import Connections
from ops.db.credentials import Credentials
from ops.db.manifest import Edge, load_edges
from ops.db.migrate import behind_head, services_with_migrations, unknown_version, versions_in
from ops.db.provision import DATABASE_WORKERS, provision
from ops.db.schema_drift import schema_differences
from ops.db.schema_shape import shape_differences
from ops.db.topology import Topology
from ops.split.capture import capture_drift
from ops.split.moves import tables_read_in

LEGACY_SCHEMA = "legacy"
PROBE_TIMEOUT = "5s"


@dataclass(frozen=True)
class Probe:
    """One foreign table of an edge, read as the consumer's app role."""

    edge: Edge
    view: str
    error: str | None  # None: it answered

    @property
    def table(self) -> str:
        return f"{self.edge.provider}.{self.view}"


def probe_edges(
    topology: Topology, edges: Iterable[Edge], connections: Connections | None = None
) -> list[Probe]:
    """Read one row through every foreign table of these edges, as each consumer's app role (a
    superuser session under SET ROLE: the app's user mapping and the remote grants apply)."""
    if connections is None:
        with Connections() as own:
            return probe_edges(topology, edges, own)
    by_consumer: dict[str, list[Edge]] = {}
    for edge in edges:
        by_consumer.setdefault(edge.consumer, []).append(edge)

    def probe_consumer(consumer: str) -> list[Probe]:
        consumer_edges = by_consumer[consumer]
        app = service_spec(consumer).app_role
        try:
            connection = connections.get(topology.admin_url(consumer))
        except psycopg.OperationalError as exc:
            return [Probe(e, v, _first_line(exc)) for e in consumer_edges for v in e.views]
        probes = []
        connection.execute(f"SET statement_timeout = '{PROBE_TIMEOUT}'")
        for edge in consumer_edges:
            for view in edge.views:
                columns = ", ".join(f'"{column.name}"' for column in edge.columns[view])
                error = None
                try:
                    connection.execute(f'SET ROLE "{app}"')
                    connection.execute(
                        f'SELECT {columns} FROM "{edge.provider}"."{view}" LIMIT 1'
                    ).fetchall()
                except psycopg.Error as exc:
                    error = _first_line(exc)
                finally:
                    connection.execute("RESET ROLE")
                probes.append(Probe(edge, view, error))
        connection.execute("RESET statement_timeout")
        return probes

    with ThreadPoolExecutor(max_workers=DATABASE_WORKERS) as pool:
        return [probe for found in pool.map(probe_consumer, by_consumer) for probe in found]


def _first_line(exc: BaseException) -> str:
    """The error's first line, and its detail's (where postgres_fdw says why it could not
    connect: "password authentication failed for user ...")."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    diag = getattr(exc, "diag", None)
    detail = (diag.message_detail or "").strip().splitlines() if diag is not None else []
    return f"{text} ({detail[0]})" if detail else text


def legacy_notes(
    topology: Topology, services: Iterable[str], connections: Connections
) -> list[str]:
    """The monolith's tables (``rose split``): a note until the split is finalized."""
    notes = []
    for name in services:
        spec = service_spec(name)
        try:
            connection = connections.get(topology.admin_url(name))
        except psycopg.OperationalError:
            continue  # a missing database is a difference already
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                (LEGACY_SCHEMA,),
            )
        ]
        if not tables:
            continue
        if set(tables_read_in(name)) & set(tables):
            notes.append(
                f"{spec.database}: legacy tables present ({', '.join(tables)}): "
                "the split is not finalized"
            )
        else:
            notes.append(
                f"{spec.database}: legacy tables outside the split remain ({', '.join(tables)})"
            )
    return notes


def check(
    topology: Topology,
    services: Iterable[str] = SERVICES,
    credentials: Credentials | None = None,
) -> tuple[list[str], list[str]]:
    """(differences, notes). Without ``credentials``, passwords are not compared (the edge
    probes still find a reader password that does not work)."""
    chosen = [service_spec(name).name for name in services]
    edges = load_edges()
    with Connections() as connections:
        return _check(topology, chosen, edges, credentials, connections)


def check_as_declared(topology: Topology) -> tuple[list[str], list[str]]:
    """``rose db check``: with the declared role passwords when they are known (nothing is
    generated), else without them, saying so in a note."""
    try:
        return check(topology, credentials=Credentials.for_environment(generate=False))
    except ConfigError as exc:
        differences, notes = check(topology)
        notes.append(f"role passwords not compared: {exc}")
        return differences, notes


def _check(
    topology: Topology,
    chosen: list[str],
    edges: list[Edge],
    credentials: Credentials | None,
    connections: Connections,
) -> tuple[list[str], list[str]]:
    report = provision(
        topology, credentials, chosen, say=lambda _: None, dry_run=True, connections=connections
    )
    differences = [change.line for change in report.changes]
    missing = {change.line.split(": ", 1)[0] for change in report.pending}
    readable = [
        edge
        for edge in edges
        if edge.consumer in chosen
        and edge.provider in chosen
        and not {service_spec(edge.consumer).database, service_spec(edge.provider).database}
        & missing
    ]
    for probe in probe_edges(topology, readable, connections):
        if probe.error is not None:
            differences.append(
                f"{service_spec(probe.edge.consumer).database}: edge {probe.edge.consumer} <- "
                f"{probe.edge.provider}: {probe.table} cannot be read as "
                f"{service_spec(probe.edge.consumer).app_role}: {probe.error}"
            )
    differences += version_differences(topology, chosen, connections)
    reachable = [name for name in chosen if service_spec(name).database not in missing]
    differences += schema_differences(topology, reachable)
    differences += shape_differences(topology, reachable, connections)
    capture_differences, capture_notes = capture_drift(topology, chosen)
    return differences + capture_differences, legacy_notes(
        topology, chosen, connections
    ) + capture_notes


def version_differences(
    topology: Topology, services: Iterable[str], connections: Connections
) -> list[str]:
    """A version table at a revision the service's migrations do not know: `rose db migrate`
    would refuse it (a newer release's database, or the table written by hand); or one behind
    the service's head: `rose db migrate` would run the rest (audit s20b L3)."""
    differences = []
    with_migrations = set(services_with_migrations())
    for name in services:
        if name not in with_migrations:
            continue
        try:
            connection = connections.get(topology.admin_url(name))
        except psycopg.OperationalError:
            continue  # a missing database is a difference already
        versions = versions_in(connection, name)
        problem = unknown_version(name, versions) or behind_head(name, versions)
        if problem:
            differences.append(problem)
    return differences


class ViewDescription(TypedDict):
    view: str
    columns: list[str]
    reachable: bool
    error: str | None


class EdgeDescription(TypedDict):
    consumer: str
    provider: str
    purpose: str
    reader: str
    server: str
    server_options: dict[str, str]
    views: list[ViewDescription]
    reachable: bool


def describe_edges(topology: Topology) -> list[EdgeDescription]:
    """Every edge as ``rose db edges`` shows it: the declaration, the server options found in
    the consumer database, and whether each foreign table answers."""
    edges = load_edges()
    probes = {
        (probe.edge.consumer, probe.edge.provider, probe.view): probe
        for probe in probe_edges(topology, edges)
    }
    described: list[EdgeDescription] = []
    for edge in edges:
        options: dict[str, str] = {}
        try:
            with psycopg.connect(
                topology.admin_url(edge.consumer), connect_timeout=10
            ) as connection:
                row = connection.execute(
                    "SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s",
                    (edge.server_name,),
                ).fetchone()
        except psycopg.OperationalError:
            row = None
        if row is not None:
            options = dict(option.split("=", 1) for option in row[0] or [])
        views: list[ViewDescription] = []
        for view in edge.views:
            probe = probes.get((edge.consumer, edge.provider, view))
            views.append(
                ViewDescription(
                    view=view,
                    columns=[str(column) for column in edge.columns[view]],
                    reachable=probe is not None and probe.error is None,
                    error=probe.error if probe is not None else "not probed",
                )
            )
        described.append(
            EdgeDescription(
                consumer=edge.consumer,
                provider=edge.provider,
                purpose=edge.purpose,
                reader=edge.reader_role,
                server=edge.server_name,
                server_options=options,
                views=views,
                reachable=all(view["reachable"] for view in views),
            )
        )
    return described
