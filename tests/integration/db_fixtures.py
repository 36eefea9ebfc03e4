"""A provisioned cluster of its own for tests that break things on purpose (drift, downgrades),
and what they share: a snapshot of everything provisioning manages, the ``rose db`` CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from click.testing import Result
from typer.testing import CliRunner

from apps.registry import SERVICES, service_spec
from ops.cli import app as rose_cli
from ops.db.credentials import Credentials
from ops.db.lifecycle import converge_databases
from ops.db.topology import Topology
from ops.stack.pgserver import LocalPostgres, throwaway_postgres

SUMUP_KEY = "sup_sk_DEMO_SECRET"


@dataclass
class Cluster:
    server: LocalPostgres
    topology: Topology
    credentials: Credentials
    home: Path  # ROSE_HOME: its credentials.json is what the CLI reads

    @property
    def admin_url(self) -> str:
        return self.server.superuser_url()

    def admin(self, service: str | None = None) -> psycopg.Connection:
        database = service_spec(service).database if service else "postgres"
        return psycopg.connect(self.topology.admin_url(service, database), autocommit=True)

    def as_role(self, service: str, role: str, database: str | None = None) -> psycopg.Connection:
        """A login as ``role`` (its declared password) into the service's database."""
        password = self.credentials.role_password(role)
        return psycopg.connect(
            host="127.0.0.1",
            port=self.server.port,
            dbname=database or service_spec(service).database,
            user=role,
            password=password,
            autocommit=True,
            connect_timeout=5,
        )

    def rose(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """The CLI on this cluster; ``env``: settings of the operator's (ROSE_MONOLITH_ROLES)."""
        settings = {
            "ROSE_HOME": str(self.home),
            "ROSE_ENV": "dev",
            "ROSE_ADMIN_URL": self.admin_url,
        }
        return CliRunner().invoke(rose_cli, list(args), env={**settings, **(env or {})})


def start_cluster(extra_settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A fresh embedded server, provisioned and migrated as `rose up` does, with one page whose
    config holds a SumUp key (what must reach orders' database only)."""
    with throwaway_postgres("rose-test-db-", extra_settings) as server:
        home = server.data_dir.parent / "home"
        home.mkdir()
        credentials = Credentials(home / "credentials.json", environ={})
        url = server.superuser_url()
        topology = Topology.single_server(url, environ={})
        report = converge_databases(topology, credentials, say=lambda _: None).edges_pass
        assert not report.statements, [change.line for change in report.statements]
        cluster = Cluster(server, topology, credentials, home)
        with cluster.admin("blog") as blog:
            page = blog.execute(
                "INSERT INTO blog.posts (slug, title, is_page, status, published_at) "
                "VALUES ('farm-shop', 'Farm shop', true, 'published', now()) RETURNING id"
            ).fetchone()[0]
            blog.execute(
                "INSERT INTO blog.page_configs (container_type, container_id, features, "
                "sumup_merchant_code, sumup_api_key, sumup_checkout_prefix) "
                "VALUES ('page', %s, '{}', 'MSANDBOX1', %s, 'rose-farm-')",
                (page, SUMUP_KEY),
            )
        yield cluster


def catalog_snapshot(
    connect: Callable[[str | None], psycopg.Connection],
) -> dict[str, list[tuple]]:
    """Everything provisioning manages, as plain rows, to compare before and after a run.
    ``connect(service or None)`` opens a superuser connection."""
    snapshot: dict[str, list[tuple]] = {}
    with connect(None) as connection:
        snapshot["roles"] = connection.execute(
            """
            SELECT rolname, rolcanlogin, rolsuper, rolinherit, rolcreatedb, rolcreaterole,
                   rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil, rolpassword, oid
            FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY rolname
            """
        ).fetchall()
        snapshot["memberships"] = connection.execute(
            "SELECT roleid, member, grantor, admin_option FROM pg_auth_members ORDER BY 1, 2, 3"
        ).fetchall()
        snapshot["databases"] = connection.execute(
            "SELECT datname, datdba, datacl::text, oid FROM pg_database ORDER BY datname"
        ).fetchall()
        snapshot["role_settings"] = connection.execute(
            "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2"
        ).fetchall()
    for name in SERVICES:
        with connect(name) as connection:
            snapshot[f"{name}.namespaces"] = connection.execute(
                "SELECT nspname, nspowner, nspacl::text, oid FROM pg_namespace ORDER BY nspname"
            ).fetchall()
            snapshot[f"{name}.relations"] = connection.execute(
                """
                SELECT c.oid, c.relname, c.relowner, c.relacl::text FROM pg_class AS c
                JOIN pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                ORDER BY c.oid
                """
            ).fetchall()
            snapshot[f"{name}.columns"] = connection.execute(
                """
                SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.attacl::text,
                       a.attfdwoptions
                FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
                JOIN pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                  AND a.attnum > 0
                ORDER BY 1, 2
                """
            ).fetchall()
            snapshot[f"{name}.default_acl"] = connection.execute(
                "SELECT defaclrole, defaclnamespace, defaclobjtype, defaclacl::text "
                "FROM pg_default_acl ORDER BY 1, 2, 3"
            ).fetchall()
            snapshot[f"{name}.servers"] = connection.execute(
                "SELECT oid, srvname, srvoptions, srvacl::text FROM pg_foreign_server ORDER BY 1"
            ).fetchall()
            snapshot[f"{name}.foreign_tables"] = connection.execute(
                "SELECT ftrelid, ftserver, ftoptions FROM pg_foreign_table ORDER BY 1"
            ).fetchall()
            snapshot[f"{name}.mappings"] = connection.execute(
                "SELECT umid, srvname, usename, umoptions FROM pg_user_mappings ORDER BY 1"
            ).fetchall()
    return snapshot


def differing_keys(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> list[str]:
    return [key for key in before if before[key] != after.get(key)]


def environ_without_rose() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("ROSE_")}
