"""``rose db provision``: databases, roles, schemas and FDW edges, from the SQL in ``db/``.

Idempotent: the SQL files only create what is missing, and a second run changes nothing.
FDW edges are created for every manifest edge whose provider export views exist; the others are
reported as pending (their provider has not been migrated yet) and created by a later run
(``rose db migrate`` runs the edge step again after migrating).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from apps.common.services import SERVICES, service_spec
from ops.credentials import Credentials
from ops.manifest import Edge, load_edges
from ops.sqlfiles import DB_DIR, run_sql_file
from ops.topology import Topology

logger = logging.getLogger("rose.provision")
Say = Callable[[str], None]


@dataclass
class EdgeReport:
    created: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    reimported: list[str] = field(default_factory=list)


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def provision_services(
    topology: Topology,
    credentials: Credentials,
    services: Iterable[str] = SERVICES,
    say: Say = logger.info,
) -> None:
    for name in [name for name in SERVICES if name in set(services)]:
        spec = service_spec(name)
        variables = {
            "svc": spec.name,
            "db": spec.database,
            "owner": spec.owner_role,
            "app": spec.app_role,
            "app_password": credentials.role_password(spec.app_role),
        }
        with connect(topology.maintenance_url(name)) as connection:
            run_sql_file(connection, DB_DIR / "schemas" / "service_cluster.sql", variables)
        with connect(topology.admin_url(name)) as connection:
            run_sql_file(connection, DB_DIR / "schemas" / "service_database.sql", variables)
        say(f"provisioned {spec.database} ({spec.owner_role}, {spec.app_role})")


def view_columns(connection: psycopg.Connection, schema: str, relation: str) -> list[str]:
    """Columns of a view or foreign table as 'name type', in order."""
    rows = connection.execute(
        """
        SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (schema, relation),
    ).fetchall()
    return [row[0] for row in rows]


def missing_export_views(topology: Topology, edge: Edge) -> list[str]:
    with connect(topology.admin_url(edge.provider)) as connection:
        return [view for view in edge.views if not view_columns(connection, "export", view)]


def provision_edge(
    topology: Topology, credentials: Credentials, edge: Edge, report: EdgeReport
) -> None:
    consumer = service_spec(edge.consumer)
    provider = service_spec(edge.provider)
    reader_password = credentials.role_password(edge.reader_role)
    with connect(topology.admin_url(edge.provider)) as connection:
        run_sql_file(
            connection,
            DB_DIR / "fdw" / "provider_edge.sql",
            {
                "provider": provider.name,
                "db": provider.database,
                "reader": edge.reader_role,
                "reader_password": reader_password,
                "views": ",".join(edge.views),
            },
        )
        provider_columns = {view: view_columns(connection, "export", view) for view in edge.views}
    host, port = topology.fdw_address(edge.provider)
    with connect(topology.admin_url(edge.consumer)) as connection:
        run_sql_file(
            connection,
            DB_DIR / "fdw" / "consumer_edge.sql",
            {
                "provider": provider.name,
                "server": edge.server_name,
                "host": host,
                "port": str(port),
                "dbname": provider.database,
                "reader": edge.reader_role,
                "reader_password": reader_password,
                "owner": consumer.owner_role,
                "app": consumer.app_role,
            },
        )
        for view in edge.views:
            existing = view_columns(connection, provider.name, view)
            stale = bool(existing) and existing != provider_columns[view]
            run_sql_file(
                connection,
                DB_DIR / "fdw" / "import_view.sql",
                {
                    "provider": provider.name,
                    "server": edge.server_name,
                    "view": view,
                    "owner": consumer.owner_role,
                    "app": consumer.app_role,
                    "stale": "true" if stale else "false",
                },
            )
            if stale:
                report.reimported.append(f"{consumer.database}: {provider.name}.{view}")
    report.created.append(str(edge))


def provision_edges(
    topology: Topology,
    credentials: Credentials,
    edges: Iterable[Edge] | None = None,
    say: Say = logger.info,
) -> EdgeReport:
    report = EdgeReport()
    for edge in load_edges() if edges is None else edges:
        missing = missing_export_views(topology, edge)
        if missing:
            report.pending.append(f"{edge}: provider has no export view {', '.join(missing)} yet")
            continue
        provision_edge(topology, credentials, edge, report)
    for line in report.created:
        say(f"fdw edge {line}")
    for line in report.reimported:
        say(f"fdw re-imported out-of-date foreign table {line}")
    for line in report.pending:
        say(f"fdw edge pending: {line}")
    return report


def provision(
    topology: Topology,
    credentials: Credentials,
    services: Iterable[str] = SERVICES,
    say: Say = logger.info,
) -> EdgeReport:
    chosen = set(services)
    provision_services(topology, credentials, chosen, say)
    # Only the edges between the services provisioned here (the others' databases may not exist).
    edges = [edge for edge in load_edges() if {edge.consumer, edge.provider} <= chosen]
    return provision_edges(topology, credentials, edges, say=say)
