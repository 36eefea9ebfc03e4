"""``rose db provision``: make the cluster equal to what ``db/`` declares.

The declaration is the SQL of ``db/schemas`` and ``db/fdw`` plus the manifest of FDW edges
(``db/fdw/manifest.toml``); this module feeds the files what they need (the services, their
roles and databases, the edges) and runs them in order (see :mod:`ops.db.sqlfiles`):

    per server     db/schemas/roles.sql, role passwords (checked here), db/schemas/databases.sql
    per database   db/schemas/service_database.sql, db/fdw/export_grants.sql,
                   db/fdw/consumer_edges.sql
    per server     db/schemas/prune_roles.sql (only with --prune)

Every file creates what is missing and revokes, resets or drops what is extra; with
``dry_run`` the same queries run and nothing else, so the report lists the exact statements a
real run would execute. A second run finds nothing to do and runs no DDL or GRANT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shlex
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import make_url

from apps.registry import SERVICES, service_spec
from ops.db.binaries import client_tool_target
from ops.db.connections import Connections, scalar
from ops.db.credentials import Credentials
from ops.db.manifest import Edge, Secret, load_edges, load_secrets
from ops.db.monolith import monolith_declaration
from ops.db.sqlfiles import Change, ConvergeError, converge_file
from ops.db.topology import MONOLITH_ROLES_ENV, Topology
from ops.paths import DB_DIR

logger = logging.getLogger("rose.provision")
Say = Callable[[str], None]

SCHEMAS_DIR = DB_DIR / "schemas"
FDW_DIR = DB_DIR / "fdw"

# Role settings (ALTER ROLE ... SET). The app: a runaway query must not hold locks forever.
# A reader: read-only even if a write grant is added by mistake, and short queries only.
# Service databases converged at the same time (each on its own connection).
DATABASE_WORKERS = 4

APP_SETTINGS = {"statement_timeout": "30s", "idle_in_transaction_session_timeout": "60s"}
READER_SETTINGS = {"default_transaction_read_only": "on", "statement_timeout": "10s"}


def namespace_pattern() -> str:
    """Role names that are rose's: ``<service>_...``."""
    return "^(" + "|".join(sorted(SERVICES)) + ")_"


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server and the services whose databases live on it."""

    maintenance_url: str
    services: tuple[str, ...]


# The oldest PostgreSQL the service databases can be made on: their builtin C.UTF-8 locale
# (db/schemas/databases.sql) came with 17. The project is built and tested on 18.
OLDEST_SERVER = 170000


def require_supported_server(version_num: int, where: str) -> None:
    """One line naming the server's version when it is older than :data:`OLDEST_SERVER`,
    before anything is made on it (a half-provisioned server otherwise)."""
    if version_num < OLDEST_SERVER:
        major, minor = divmod(version_num, 10000)
        raise ConvergeError(
            f"{where}: PostgreSQL {major}.{minor} is too old: rose-ash needs PostgreSQL 17 or "
            "later (the service databases use its builtin C.UTF-8 locale); it is tested on 18"
        )


def servers(topology: Topology) -> list[Server]:
    grouped: dict[tuple[str, int], list[str]] = {}
    urls: dict[tuple[str, int], str] = {}
    for name in SERVICES:
        url = make_url(topology.maintenance_url(name))
        key = (url.host or "localhost", url.port or 5432)
        grouped.setdefault(key, []).append(name)
        urls.setdefault(key, topology.maintenance_url(name))
    return [Server(urls[key], tuple(names)) for key, names in grouped.items()]


# -- what the files are given --------------------------------------------------------------------
def _password(credentials: Credentials | None, role: str) -> str | None:
    return credentials.role_password(role) if credentials is not None else None


def declared_roles(
    services: Iterable[str], edges: Iterable[Edge], credentials: Credentials | None
) -> list[dict[str, object]]:
    """Every role of these services and the reader roles of the edges they provide."""
    chosen = set(services)
    roles: list[dict[str, object]] = []
    for name in [name for name in SERVICES if name in chosen]:
        spec = service_spec(name)
        roles.append(
            {
                "name": spec.owner_role,
                "login": False,
                "inherit": True,
                "password": None,
                "settings": {},
            }
        )
        roles.append(
            {
                "name": spec.app_role,
                "login": True,
                "inherit": False,
                "password": _password(credentials, spec.app_role),
                "settings": APP_SETTINGS,
            }
        )
    for edge in edges:
        if edge.provider in chosen:
            roles.append(
                {
                    "name": edge.reader_role,
                    "login": True,
                    "inherit": False,
                    "password": _password(credentials, edge.reader_role),
                    "settings": READER_SETTINGS,
                }
            )
    return roles


def _columns(edge: Edge, view: str) -> list[dict[str, str]]:
    return [{"name": column.name, "type": column.type} for column in edge.columns[view]]


def export_grants(provider: str, edges: Iterable[Edge]) -> list[dict[str, object]]:
    return [
        {
            "edge": f"{edge.consumer} <- {edge.provider}",
            "reader": edge.reader_role,
            "view": view,
            "columns": _columns(edge, view),
        }
        for edge in edges
        if edge.provider == provider
        for view in edge.views
    ]


def secrets_of(provider: str, secrets: Iterable[Secret]) -> list[dict[str, object]]:
    return [
        {
            "schema": secret.schema,
            "table": secret.table,
            "column": secret.column,
            "only_in": list(secret.only_in),
        }
        for secret in secrets
        if secret.provider == provider
    ]


def consumer_edges(
    topology: Topology, consumer: str, edges: Iterable[Edge], credentials: Credentials | None
) -> list[dict[str, object]]:
    declared: list[dict[str, object]] = []
    for edge in edges:
        if edge.consumer != consumer:
            continue
        host, port = topology.fdw_address(edge.provider)
        declared.append(
            {
                "edge": f"{edge.consumer} <- {edge.provider}",
                "provider": edge.provider,
                "server": edge.server_name,
                "host": host,
                "port": str(port),
                "dbname": service_spec(edge.provider).database,
                "reader": edge.reader_role,
                "password": _password(credentials, edge.reader_role),
                "views": [{"name": view, "columns": _columns(edge, view)} for view in edge.views],
            }
        )
    return declared


# -- role passwords ------------------------------------------------------------------------------
def password_matches(verifier: str | None, role: str, password: str) -> bool:
    """Whether ``password`` is the one behind a stored SCRAM-SHA-256 (or md5) verifier."""
    if not verifier:
        return False
    if verifier.startswith("SCRAM-SHA-256$"):
        try:
            iterations_salt, keys = verifier.split("$", 1)[1].split("$")
            iterations, salt = iterations_salt.split(":")
            stored_key = keys.split(":")[0]
        except ValueError:
            return False
        # PostgreSQL applies SASLprep first; our passwords are ASCII, for which it changes nothing.
        if not password.isascii():
            return False
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        return hmac.compare_digest(
            base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key
        )
    if verifier.startswith("md5"):
        return hmac.compare_digest(
            verifier, "md5" + hashlib.md5((password + role).encode()).hexdigest()
        )
    return False


def password_changes(
    connection: psycopg.Connection, roles: list[dict[str, object]], *, apply: bool
) -> list[Change]:
    """A login role whose password is not the declared one gets it back."""
    with_password = {str(role["name"]): str(role["password"]) for role in roles if role["password"]}
    if not with_password:
        return []
    verifiers: dict[str, str | None] = dict(
        connection.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
            (list(with_password),),
        ).fetchall()
    )
    changes = []
    for role, password in with_password.items():
        if role not in verifiers or password_matches(verifiers[role], role, password):
            continue  # a missing role is created with its password by roles.sql
        text = scalar(
            connection,
            "SELECT format('ALTER ROLE %%I PASSWORD %%L', %s::text, %s::text)",
            (role, password),
        )
        changes.append(Change(f"cluster: role {role} password is not the declared one", text))
        if apply:
            connection.execute(text)
    return changes


# -- the run -------------------------------------------------------------------------------------
@dataclass
class ProvisionReport:
    changes: list[Change] = field(default_factory=list)
    applied: bool = False
    # Declared objects examined (roles, databases, schemas, relations, servers, mappings).
    inventory: int = 0

    def of(self, action: str) -> list[Change]:
        return [change for change in self.changes if change.action == action]

    @property
    def statements(self) -> list[Change]:
        return [change for change in self.changes if change.sql]

    @property
    def left(self) -> list[Change]:
        """Differences provisioning does not repair (each line says why)."""
        return self.of("left")

    @property
    def pending(self) -> list[Change]:
        return self.of("pending")

    def summary(self) -> str:
        created = {change.subject for change in self.of("created")}
        changed = {change.subject for change in self.of("changed")} - created
        # The inventory is counted after the pass: what it created or changed is in it.
        unchanged = max(0, self.inventory - len(changed) - len(created))
        verb = "provisioned" if self.applied else "dry run (nothing changed)"
        text = (
            f"{verb}: {len(created)} created, {len(changed)} changed, {unchanged} unchanged "
            f"({len(self.statements)} statements)"
        )
        if self.left:
            text += f"; {len(self.left)} left for a person"
        if self.pending:
            text += f"; {len(self.pending)} pending"
        return text


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


_INVENTORY = """
SELECT (SELECT count(*) FROM pg_namespace
        WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'legacy'))
     + (SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', 'legacy'))
     + (SELECT count(*) FROM pg_foreign_server)
     + (SELECT count(*) FROM pg_user_mappings)
"""


def database_exists(connection: psycopg.Connection, name: str) -> bool:
    row = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def refuse_missing_monolith_roles(
    topology: Topology, connections: Connections | None = None
) -> None:
    """A declared monolith role that does not exist is a ConvergeError before anything changes.
    Most likely the setting is misspelt, and the real role is then a stranger to provisioning,
    whose CONNECT and legacy grants it would revoke: the legacy app cut off mid-split. (``rose
    db check`` reports it as a difference instead: databases.sql names it.)"""
    if not topology.monolith_roles:
        return
    if connections is None:
        with Connections() as own:
            return refuse_missing_monolith_roles(topology, own)
    for server in servers(topology):
        present = {
            row[0]
            for row in connections.get(server.maintenance_url).execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                (list(topology.monolith_roles),),
            )
        }
        absent = [role for role in topology.monolith_roles if role not in present]
        if absent:
            url = make_url(server.maintenance_url)
            one = len(absent) == 1
            raise ConvergeError(
                f"{MONOLITH_ROLES_ENV} names {', '.join(absent)}, which "
                f"{'does' if one else 'do'} not exist on {url.host}:{url.port or 5432}: rose "
                f"never creates {'it' if one else 'them'}; create {'it' if one else 'them'} "
                "(and grant it its legacy privileges) or take "
                f"{'it' if one else 'them'} out of {MONOLITH_ROLES_ENV}. Nothing was changed"
            )


def provision(
    topology: Topology,
    credentials: Credentials | None,
    services: Iterable[str] = SERVICES,
    say: Say = logger.info,
    *,
    dry_run: bool = False,
    prune: bool = False,
    edges: list[Edge] | None = None,
    secrets: list[Secret] | None = None,
    connections: Connections | None = None,
    before_migrations: bool = False,
) -> ProvisionReport:
    """Converge the chosen services' roles, databases, privileges and FDW edges.

    ``credentials`` None (``rose db check``) compares everything but passwords.
    ``before_migrations``: the migrations run next, so an export view's shape that differs from
    the edges (the views are theirs) is pending, not left for a person."""
    if connections is None:
        with Connections() as own:
            return provision(
                topology, credentials, services, say, dry_run=dry_run, prune=prune,
                edges=edges, secrets=secrets, connections=own,
                before_migrations=before_migrations,
            )  # fmt: skip
    chosen = {service_spec(name).name for name in services}
    if not dry_run:
        refuse_missing_monolith_roles(topology, connections)
    edges = load_edges() if edges is None else edges
    secrets = load_secrets() if secrets is None else secrets
    apply = not dry_run
    report = ProvisionReport(applied=apply)

    def run(connection: psycopg.Connection, path: str, variables: dict[str, str]) -> None:
        changes = converge_file(connection, DB_DIR / path, variables, apply=apply)
        for change in changes:
            say(change.text() if dry_run else change.line)
        report.changes.extend(changes)

    existing: set[str] = set()
    # Every server's version first: an old one refused after another was provisioned would
    # leave the system half made.
    for server in servers(topology):
        if any(name in chosen for name in server.services):
            require_supported_server(
                connections.get(server.maintenance_url).info.server_version,
                make_url(server.maintenance_url).render_as_string(hide_password=True),
            )
    for server in servers(topology):
        hosted = [name for name in server.services if name in chosen]
        if not hosted:
            continue
        hosted_edges = [edge for edge in edges if edge.provider in server.services]
        roles = declared_roles(hosted, hosted_edges, credentials)
        variables = server_variables(
            server, hosted, edges, credentials, monolith_roles=topology.monolith_roles
        )
        connection = connections.get(server.maintenance_url)
        run(connection, "schemas/roles.sql", variables["schemas/roles.sql"])
        changes = password_changes(connection, roles, apply=apply)
        for change in changes:
            say(change.text() if dry_run else change.line)
        report.changes.extend(changes)
        run(connection, "schemas/databases.sql", variables["schemas/databases.sql"])
        report.inventory += len(roles) + len(hosted)
        existing |= {
            name for name in hosted if database_exists(connection, service_spec(name).database)
        }

    # Inside each database: independent of one another, so they run side by side (one
    # connection each); their changes are reported in service order.
    def converge_database(name: str) -> tuple[list[Change], int]:
        connection = connections.get(topology.admin_url(name))
        changes = []
        for path, variables in database_variables(topology, name, edges, secrets, credentials):
            changes += converge_file(connection, DB_DIR / path, variables, apply=apply)
        return changes, scalar(connection, _INVENTORY)

    names = [name for name in SERVICES if name in chosen]
    for name in names:
        if name not in existing:  # only in a dry run: a real run has just created it
            report.changes.append(
                Change(
                    f"{service_spec(name).database}: pending: the database does not exist yet "
                    "(provisioning creates it, then its schemas, privileges and FDW edges)",
                    "",
                )
            )
    with ThreadPoolExecutor(max_workers=DATABASE_WORKERS) as pool:
        results = list(pool.map(converge_database, [name for name in names if name in existing]))
    for changes, inventory in results:
        if before_migrations:
            changes = [_for_the_migrations(change) for change in changes]
        for change in changes:
            say(change.text() if dry_run else change.line)
        report.changes.extend(changes)
        report.inventory += inventory

    if prune:
        for server in servers(topology):
            if not chosen & set(server.services):
                continue
            run(
                connections.get(server.maintenance_url),
                "schemas/prune_roles.sql",
                server_variables(server, [], edges, None)["schemas/prune_roles.sql"],
            )
        dropped = {
            change.subject for change in report.changes if change.sql.startswith("DROP ROLE")
        }
        report.changes = [
            change for change in report.changes if change.sql or change.subject not in dropped
        ]
    if apply and report.statements:
        verify_converged(
            topology, credentials, chosen, prune=prune, edges=edges, secrets=secrets,
            connections=connections,
        )  # fmt: skip
    return report


def _for_the_migrations(change: Change) -> Change:
    """An export view's column missing, typed otherwise or undeclared, seen before the
    migrations: they make the views, and the next one may be what changes it (blog 0008 adds
    export.pages.published), so it is pending; the pass after them says what remains."""
    if change.action != "left" or " export view export." not in change.line:
        return change
    where, _, what = change.line.partition(": ")
    return Change(
        f"{where}: pending: {what} (the migrations run next make the views; the pass after "
        "them says what remains)",
        "",
    )


def verify_converged(
    topology: Topology,
    credentials: Credentials | None,
    services: Iterable[str],
    *,
    prune: bool,
    edges: list[Edge],
    secrets: list[Secret],
    connections: Connections,
) -> None:
    """After a run that changed something: the same comparison again (a dry run), which must
    find nothing to repair. One statement undoing another's work (a REVOKE ... CASCADE taking
    the column grants the run had just found present, audit s20b M1) would otherwise exit 0
    with the drift left for the next run."""
    again = provision(
        topology, credentials, services, say=lambda _: None, dry_run=True, prune=prune,
        edges=edges, secrets=secrets, connections=connections,
    )  # fmt: skip
    if again.statements:
        raise ConvergeError(
            "provisioned, yet still different from db/ (a run left what it repaired undone): "
            + "; ".join(change.line for change in again.statements)
        )


def server_variables(
    server: Server,
    hosted: Iterable[str],
    edges: Iterable[Edge],
    credentials: Credentials | None,
    *,
    monolith_roles: Sequence[str] = (),
) -> dict[str, dict[str, str]]:
    """What each file of one server is given (db/schemas/roles.sql, databases.sql,
    prune_roles.sql): the roles and databases of the ``hosted`` services, everything rose
    declares on the server as known, and the monolith's declared roles (ops/db/monolith.py)."""
    chosen = [name for name in server.services if name in set(hosted)]
    hosted_edges = [edge for edge in edges if edge.provider in server.services]
    known_roles = [role["name"] for role in declared_roles(server.services, hosted_edges, None)]
    databases = [
        {
            "name": service_spec(name).database,
            "owner": service_spec(name).owner_role,
            "connect": [service_spec(name).app_role]
            + [edge.reader_role for edge in hosted_edges if edge.provider == name],
        }
        for name in chosen
    ]
    namespace = namespace_pattern()
    common = {"namespace": namespace, "known": _json(known_roles)}
    return {
        "schemas/roles.sql": {
            **common,
            "roles": _json(declared_roles(chosen, hosted_edges, credentials)),
        },
        "schemas/databases.sql": {
            "namespace": namespace,
            "known": _json([service_spec(name).database for name in server.services]),
            "databases": _json(databases),
            "monolith": _json(monolith_declaration(monolith_roles)),
        },
        "schemas/prune_roles.sql": common,
    }


def database_variables(
    topology: Topology,
    name: str,
    edges: Iterable[Edge],
    secrets: Iterable[Secret],
    credentials: Credentials | None,
) -> list[tuple[str, dict[str, str]]]:
    """The files run in one service database, in order, with what each is given."""
    spec = service_spec(name)
    edges = list(edges)
    providers = sorted({edge.provider for edge in edges if edge.consumer == name})
    return [
        (
            "schemas/service_database.sql",
            {
                "svc": name,
                "owner": spec.owner_role,
                "app": spec.app_role,
                "providers": _json(providers),
                # For the rules of schema legacy (what the monolith's roles may hold there).
                "monolith": _json(monolith_declaration(topology.monolith_roles)),
            },
        ),
        ("fdw/export_grants.sql", export_variables(name, edges, secrets)),
        (
            "fdw/consumer_edges.sql",
            {
                "owner": spec.owner_role,
                "app": spec.app_role,
                "edges": _json(consumer_edges(topology, name, edges, credentials)),
            },
        ),
    ]


def export_variables(
    provider: str, edges: Iterable[Edge], secrets: Iterable[Secret]
) -> dict[str, str]:
    spec = service_spec(provider)
    return {
        "owner": spec.owner_role,
        "grants": _json(export_grants(provider, edges)),
        "secrets": _json(secrets_of(provider, secrets)),
    }


def grant_exports(connection: psycopg.Connection, provider: str) -> list[Change]:
    """The provider side of its edges, on an open connection (the Alembic environment's, as the
    owner, after migrations recreated views): readers get their column grants back."""
    variables = export_variables(provider, load_edges(), load_secrets())
    changes = converge_file(connection, FDW_DIR / "export_grants.sql", variables, apply=True)
    for change in changes:
        if change.sql:
            logger.info("%s", change.line)
    return changes


# -- by hand -------------------------------------------------------------------------------------
SQL_FILES = (
    "schemas/roles.sql",
    "schemas/databases.sql",
    "schemas/service_database.sql",
    "fdw/export_grants.sql",
    "fdw/consumer_edges.sql",
    "schemas/prune_roles.sql",
)


def psql_command(url: str, path: str, variables: dict[str, str]) -> str:
    """One file's psql command line: the connection without its password (PGPASSWORD or
    ~/.pgpass give it), every variable, stopping at the first error; the file as this rose
    reads it (a checkout's db/, or the installed package's), so it runs from any directory."""
    target, _ = client_tool_target(url)
    words = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", shlex.quote(target)]
    for name, value in variables.items():
        words += ["-v", f"{name}={shlex.quote(value)}"]
    return " ".join([*words, "-f", shlex.quote(str(DB_DIR / path))])


def psql_commands(topology: Topology, only: str | None = None) -> list[str]:
    """The psql commands that run db/'s SQL by hand, in `rose db provision --prune`'s order, with
    the complete values it passes (without passwords: null, so none is compared or changed).
    ``only``: one file's (its path under db/)."""
    if only is not None and only not in SQL_FILES:
        raise ValueError(
            f"{only}: not one of db/'s SQL files ({', '.join(f'db/{p}' for p in SQL_FILES)})"
        )
    edges, secrets = load_edges(), load_secrets()
    runs: list[tuple[str, str, dict[str, str]]] = []
    for server in servers(topology):
        by_file = server_variables(
            server, server.services, edges, None, monolith_roles=topology.monolith_roles
        )
        for path in ("schemas/roles.sql", "schemas/databases.sql"):
            runs.append((server.maintenance_url, path, by_file[path]))
    for name in SERVICES:
        for path, variables in database_variables(topology, name, edges, secrets, None):
            runs.append((topology.admin_url(name), path, variables))
    for server in servers(topology):
        path = "schemas/prune_roles.sql"
        runs.append((server.maintenance_url, path, server_variables(server, [], edges, None)[path]))
    return [
        psql_command(url, path, variables)
        for url, path, variables in runs
        if only is None or path == only
    ]
