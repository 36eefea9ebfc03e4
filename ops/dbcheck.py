"""``rose db check``: compare what exists in PostgreSQL with what ``db/`` declares.

Reports each difference in one line naming the object and the role: a missing role or database,
a missing or extra privilege (on a database, schema, table, column, sequence, view, foreign
server), a foreign table missing, unexpected, or out of date with its provider's export view.
Privileges are compared in full (``aclexplode`` of the effective ACL), so any grant that
provisioning did not declare is reported, whoever made it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import psycopg

from apps.common.services import SERVICES, ServiceSpec, service_spec
from ops.manifest import Edge, load_edges
from ops.provision import connect, missing_export_views, view_columns
from ops.split_moves import tables_read_in
from ops.topology import Topology

TABLE_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
SEQUENCE_PRIVILEGES = frozenset({"USAGE", "SELECT"})
READ_PRIVILEGES = frozenset({"SELECT"})
KIND_NAMES = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}

Grants = dict[str, set[str]]  # grantee ("PUBLIC" or role) -> privileges

# `rose split`: its ledger schema in each target database, and the monolith's tables it reads.
SPLIT_SCHEMA = "split"
LEGACY_SCHEMA = "legacy"


def _compare(where: str, what: str, actual: Grants, expected: Grants) -> list[str]:
    differences = []
    for grantee in sorted(set(actual) | set(expected)):
        have = actual.get(grantee, set())
        want = expected.get(grantee, set())
        for privilege in sorted(have - want):
            differences.append(f"{where}: extra privilege {privilege} on {what} for {grantee}")
        for privilege in sorted(want - have):
            differences.append(f"{where}: missing privilege {privilege} on {what} for {grantee}")
    return differences


def _grants(rows: Iterable[tuple[str, str]]) -> Grants:
    grants: Grants = defaultdict(set)
    for grantee, privilege in rows:
        grants[grantee].add(privilege)
    return dict(grants)


class Checker:
    def __init__(self, topology: Topology, edges: list[Edge] | None = None) -> None:
        self.topology = topology
        self.all_edges = load_edges() if edges is None else edges
        self.differences: list[str] = []
        self.notes: list[str] = []
        # Edges whose provider publishes its views: these must exist completely.
        self.edges = []
        for edge in self.all_edges:
            missing = missing_export_views(topology, edge)
            if missing:
                self.notes.append(f"edge {edge} pending: no export view {', '.join(missing)}")
            else:
                self.edges.append(edge)

    def report(self, line: str) -> None:
        self.differences.append(line)

    def run(self, services: Iterable[str] = SERVICES) -> list[str]:
        for name in services:
            spec = service_spec(name)
            if not self._check_cluster(spec):
                continue
            with connect(self.topology.admin_url(name)) as connection:
                self._check_database(spec, connection)
        self._check_readers()
        return self.differences

    def _readers_of(self, provider: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.provider == provider]

    def _consumed_by(self, consumer: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.consumer == consumer]

    # -- cluster: roles and the database ---------------------------------------------------
    def _check_cluster(self, spec: ServiceSpec) -> bool:
        with connect(self.topology.maintenance_url(spec.name)) as connection:
            roles = {
                row[0]: row[1:]
                for row in connection.execute(
                    """
                    SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole,
                           rolreplication, rolbypassrls
                    FROM pg_roles WHERE rolname = ANY(%s)
                    """,
                    ([spec.owner_role, spec.app_role],),
                )
            }
            for role, must_login in ((spec.owner_role, False), (spec.app_role, True)):
                if role not in roles:
                    self.report(f"cluster: missing role {role}")
                    continue
                can_login, *powers = roles[role]
                if can_login != must_login:
                    wanted = "LOGIN" if must_login else "NOLOGIN"
                    self.report(f"cluster: role {role} should be {wanted}")
                if any(powers):
                    self.report(
                        f"cluster: role {role} has superuser, createdb, createrole, "
                        "replication or bypassrls"
                    )
            self._check_memberships(connection, [spec.app_role, spec.owner_role])
            database = connection.execute(
                """
                SELECT pg_get_userbyid(datdba), datdba FROM pg_database WHERE datname = %s
                """,
                (spec.database,),
            ).fetchone()
            if database is None:
                self.report(f"cluster: missing database {spec.database}")
                return False
            owner, owner_oid = database
            if owner != spec.owner_role:
                self.report(f"cluster: database {spec.database} is owned by {owner}")
            actual = _grants(
                connection.execute(
                    """
                    SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type
                    FROM pg_database AS d,
                         aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a
                    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
                    WHERE d.datname = %s AND a.grantee <> %s
                    """,
                    (spec.database, owner_oid),
                )
            )
            expected: Grants = {spec.app_role: {"CONNECT"}}
            for edge in self._readers_of(spec.name):
                expected[edge.reader_role] = {"CONNECT"}
            self.differences.extend(
                _compare("cluster", f"database {spec.database}", actual, expected)
            )
        return True

    def _check_memberships(self, connection: psycopg.Connection, roles: list[str]) -> None:
        for member, group in connection.execute(
            """
            SELECT m.rolname, g.rolname
            FROM pg_auth_members AS am
            JOIN pg_roles AS m ON m.oid = am.member
            JOIN pg_roles AS g ON g.oid = am.roleid
            WHERE m.rolname = ANY(%s)
            """,
            (roles,),
        ):
            self.report(f"cluster: extra membership: {member} is a member of {group}")

    def _check_readers(self) -> None:
        by_server: dict[str, list[Edge]] = defaultdict(list)
        for edge in self.edges:
            by_server[self.topology.maintenance_url(edge.provider)].append(edge)
        for url, edges in by_server.items():
            with connect(url) as connection:
                for edge in edges:
                    row = connection.execute(
                        """
                        SELECT rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole
                               OR rolreplication OR rolbypassrls,
                               coalesce('default_transaction_read_only=on' = ANY(rolconfig), false)
                        FROM pg_roles WHERE rolname = %s
                        """,
                        (edge.reader_role,),
                    ).fetchone()
                    if row is None:
                        self.report(f"cluster: missing role {edge.reader_role} (edge {edge})")
                        continue
                    can_login, powerful, read_only = row
                    if not can_login:
                        self.report(f"cluster: role {edge.reader_role} should be LOGIN")
                    if powerful:
                        self.report(f"cluster: role {edge.reader_role} has elevated attributes")
                    if not read_only:
                        self.report(
                            f"cluster: role {edge.reader_role} lacks "
                            "default_transaction_read_only = on"
                        )
                    self._check_memberships(connection, [edge.reader_role])

    # -- inside the service database -------------------------------------------------------
    def _check_database(self, spec: ServiceSpec, connection: psycopg.Connection) -> None:
        where = spec.database
        consumed = self._consumed_by(spec.name)
        provider_schemas = {edge.provider: edge for edge in consumed}
        schema_expectations: dict[str, Grants] = {
            spec.name: {spec.app_role: {"USAGE"}},
            "export": {edge.reader_role: {"USAGE"} for edge in self._readers_of(spec.name)},
        }
        for provider in provider_schemas:
            schema_expectations[provider] = {spec.app_role: {"USAGE"}}

        schemas = {
            row[0]: (row[1], row[2])
            for row in connection.execute(
                """
                SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspowner
                FROM pg_namespace AS n
                WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
                """
            )
        }
        if SPLIT_SCHEMA in schemas:
            # The split's ledger (ops/split.py) is the owner's alone: any grant there is drift.
            schema_expectations[SPLIT_SCHEMA] = {}
        if LEGACY_SCHEMA in schemas:
            self._note_legacy(spec, connection)
        for schema, expected in schema_expectations.items():
            if schema not in schemas:
                self.report(f"{where}: missing schema {schema}")
                continue
            owner, owner_oid = schemas[schema]
            if owner != spec.owner_role:
                self.report(f"{where}: schema {schema} is owned by {owner}, not {spec.owner_role}")
            actual = _grants(
                connection.execute(
                    """
                    SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type
                    FROM pg_namespace AS n,
                         aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
                    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
                    WHERE n.nspname = %s AND a.grantee <> %s
                    """,
                    (schema, owner_oid),
                )
            )
            self.differences.extend(_compare(where, f"schema {schema}", actual, expected))
        for schema in sorted(set(schemas) - set(schema_expectations) - {"public", LEGACY_SCHEMA}):
            self.report(f"{where}: unexpected schema {schema}")

        expected_views = {
            view: {edge.reader_role for edge in self._readers_of(spec.name) if view in edge.views}
            for edge in self._readers_of(spec.name)
            for view in edge.views
        }
        expected_foreign = {(edge.provider, view): edge for edge in consumed for view in edge.views}
        seen_foreign: set[tuple[str, str]] = set()

        for schema, name, kind, owner, oid, owner_oid in connection.execute(
            """
            SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.oid, c.relowner
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
              AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
            ORDER BY 1, 2
            """
        ).fetchall():
            if schema == LEGACY_SCHEMA:
                continue  # the monolith's, until `rose split finalize`: a note, not drift
            what = f"{KIND_NAMES[kind]} {schema}.{name}"
            acl_kind = "s" if kind == "S" else "r"
            actual = _grants(
                connection.execute(
                    f"""
                    SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type
                    FROM pg_class AS c,
                         aclexplode(coalesce(c.relacl, acldefault('{acl_kind}', c.relowner))) AS a
                    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
                    WHERE c.oid = %s AND a.grantee <> %s
                    """,
                    (oid, owner_oid),
                )
            )
            self._check_column_grants(connection, where, what, oid)
            if owner != spec.owner_role:
                self.report(f"{where}: {what} is owned by {owner}, not {spec.owner_role}")
            if schema == SPLIT_SCHEMA:
                expected = {}
            elif schema == spec.name:
                privileges = SEQUENCE_PRIVILEGES if kind == "S" else TABLE_PRIVILEGES
                expected = {spec.app_role: set(privileges)}
            elif schema == "export" and kind == "v":
                if name not in expected_views:
                    expected = {}
                else:
                    expected = {reader: set(READ_PRIVILEGES) for reader in expected_views[name]}
            elif kind == "f" and (schema, name) in expected_foreign:
                seen_foreign.add((schema, name))
                expected = {spec.app_role: set(READ_PRIVILEGES)}
                self._check_foreign_columns(
                    connection, where, schema, name, expected_foreign[(schema, name)]
                )
            else:
                self.report(f"{where}: unexpected {what}")
                continue
            self.differences.extend(_compare(where, what, actual, expected))

        for schema, name in sorted(set(expected_foreign) - seen_foreign):
            self.report(
                f"{where}: missing foreign table {schema}.{name} "
                f"(edge {expected_foreign[(schema, name)]})"
            )
        self._check_servers(spec, connection, consumed)

    def _note_legacy(self, spec: ServiceSpec, connection: psycopg.Connection) -> None:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (LEGACY_SCHEMA,)
            )
        ]
        read_by_split = set(tables_read_in(spec.name))
        if read_by_split & set(tables):
            self.notes.append(
                f"{spec.database}: legacy tables present ({', '.join(tables)}): "
                "the split is not finalized"
            )
        else:
            self.notes.append(
                f"{spec.database}: legacy tables outside the split remain "
                f"({', '.join(tables) or 'none'})"
            )

    def _check_column_grants(
        self, connection: psycopg.Connection, where: str, what: str, oid: int
    ) -> None:
        for column, grantee, privilege in connection.execute(
            """
            SELECT a.attname, coalesce(r.rolname, 'PUBLIC'), x.privilege_type
            FROM pg_attribute AS a, aclexplode(a.attacl) AS x
            LEFT JOIN pg_roles AS r ON r.oid = x.grantee
            WHERE a.attrelid = %s AND a.attacl IS NOT NULL
            """,
            (oid,),
        ):
            self.report(
                f"{where}: extra privilege {privilege} on column {column} of {what} for {grantee}"
            )

    def _check_foreign_columns(
        self, connection: psycopg.Connection, where: str, schema: str, name: str, edge: Edge
    ) -> None:
        local = view_columns(connection, schema, name)
        with connect(self.topology.admin_url(edge.provider)) as provider:
            remote = view_columns(provider, "export", name)
        if local != remote:
            self.report(
                f"{where}: foreign table {schema}.{name} is out of date with "
                f"{service_spec(edge.provider).database} export.{name} "
                f"(local: {', '.join(local)}; provider: {', '.join(remote)})"
            )

    def _check_servers(
        self, spec: ServiceSpec, connection: psycopg.Connection, consumed: list[Edge]
    ) -> None:
        where = spec.database
        wanted = {edge.server_name: edge for edge in consumed}
        servers = {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT srvname, srvoptions, srvacl, srvowner FROM pg_foreign_server"
            )
        }
        for server in sorted(set(servers) - set(wanted)):
            self.report(f"{where}: unexpected foreign server {server}")
        for server, edge in wanted.items():
            if server not in servers:
                self.report(f"{where}: missing foreign server {server} (edge {edge})")
                continue
            options = dict(option.split("=", 1) for option in servers[server][0] or [])
            host, port = self.topology.fdw_address(edge.provider)
            expected_options = {
                "host": host,
                "port": str(port),
                "dbname": service_spec(edge.provider).database,
                "updatable": "false",
            }
            for key, value in expected_options.items():
                if options.get(key) != value:
                    self.report(
                        f"{where}: foreign server {server} option {key} is "
                        f"{options.get(key)!r}, expected {value!r}"
                    )
            actual = _grants(
                connection.execute(
                    """
                    SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type
                    FROM pg_foreign_server AS s,
                         aclexplode(coalesce(s.srvacl, acldefault('S', s.srvowner))) AS a
                    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
                    WHERE s.srvname = %s AND a.grantee <> s.srvowner
                    """,
                    (server,),
                )
            )
            self.differences.extend(
                _compare(where, f"foreign server {server}", actual, {spec.owner_role: {"USAGE"}})
            )
            mappings = {
                row[0]: dict(option.split("=", 1) for option in row[1] or [])
                for row in connection.execute(
                    "SELECT usename, umoptions FROM pg_user_mappings WHERE srvname = %s",
                    (server,),
                )
            }
            for role in (spec.owner_role, spec.app_role):
                mapping = mappings.pop(role, None)
                if mapping is None:
                    self.report(f"{where}: missing user mapping for {role} on {server}")
                elif mapping.get("user") != edge.reader_role or not mapping.get("password"):
                    self.report(
                        f"{where}: user mapping for {role} on {server} must name user "
                        f"{edge.reader_role} and carry a password"
                    )
            for role in sorted(mappings):
                self.report(f"{where}: extra user mapping for {role} on {server}")


def check(topology: Topology, services: Iterable[str] = SERVICES) -> tuple[list[str], list[str]]:
    checker = Checker(topology)
    differences = checker.run(services)
    return differences, checker.notes
