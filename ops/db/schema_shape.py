"""The rest of a service's schema that ``rose db check`` compares: the indexes, constraints,
column defaults and identity columns of its tables, as its migrations make them at head.

The models do not declare every one of these (a partial index, a check written in a migration),
so they are compared with what the migrations themselves made: ``db/migrations/<service>/
shape.toml``, written from databases the migrations just made (``python -m ops.db.schema_shape
--write``; a test fails while it is stale). A database at that head that lacks one, has one more,
or holds one otherwise is drift: a unique index dropped by hand lets a refund be recorded twice,
a check constraint dropped lets a status no code knows in, a default changed writes other rows.

Only the tables the models declare are compared (the split's legacy tables and its own schemas
are ``rose db check``'s other parts), and only a database whose version table is at the head the
file was written at (one behind is named by the version check: ``rose db migrate``). Names are
read with ``search_path`` set to ``pg_catalog``, so every name in a definition is qualified
whatever the session's path."""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apps.registry import service_spec
from ops.db.connections import Connections
from ops.db.migrate import MIGRATIONS_DIR, head_revisions, services_with_migrations, versions_in
from ops.db.schema_drift import declared_metadata
from ops.db.topology import Topology

SHAPE_FILE = "shape.toml"
# Each kind's table in the file, and how a line names one of it.
KINDS = {
    "indexes": "index",
    "constraints": "constraint",
    "defaults": "default of",
    "identities": "identity of",
    "triggers": "trigger",
    "functions": "function",
}

# One query per kind: (key, definition). Indexes that back a constraint (a primary key, a unique
# or an exclusion constraint) are the constraint's; NOT NULL constraints (pg_constraint holds
# them from PostgreSQL 18) are the nullability ``schema_drift`` compares already.
_SHAPE_SQL = {
    "indexes": """
        SELECT format('%%s.%%s %%s', n.nspname, t.relname, i.relname),
               pg_get_indexdef(i.oid)
               -- an index a failed CREATE INDEX CONCURRENTLY or REINDEX left is not one
               || CASE WHEN x.indisvalid AND x.indisready THEN '' ELSE ' (INVALID)' END
        FROM pg_index AS x
        JOIN pg_class AS i ON i.oid = x.indexrelid
        JOIN pg_class AS t ON t.oid = x.indrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = i.oid
                          AND k.contype IN ('p', 'u', 'x'))
    """,
    "constraints": """
        SELECT format('%%s.%%s %%s', n.nspname, t.relname, k.conname), pg_get_constraintdef(k.oid)
        FROM pg_constraint AS k
        JOIN pg_class AS t ON t.oid = k.conrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s) AND k.contype <> 'n'
    """,
    "defaults": """
        SELECT format('%%s.%%s.%%s', n.nspname, t.relname, a.attname),
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attrdef AS d
        JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        JOIN pg_class AS t ON t.oid = d.adrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s) AND NOT a.attisdropped
    """,
    "identities": """
        SELECT format('%%s.%%s.%%s', n.nspname, t.relname, a.attname),
               CASE a.attidentity WHEN 'a' THEN 'ALWAYS' ELSE 'BY DEFAULT' END
        FROM pg_attribute AS a
        JOIN pg_class AS t ON t.oid = a.attrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s)
          AND a.attidentity <> '' AND NOT a.attisdropped
    """,
    # A trigger dropped by hand (blog's that keeps the SumUp key a config stops using) or one
    # made by hand changes what every write does.
    "triggers": """
        SELECT format('%%s.%%s %%s', n.nspname, t.relname, g.tgname), pg_get_triggerdef(g.oid)
        FROM pg_trigger AS g
        JOIN pg_class AS t ON t.oid = g.tgrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s) AND NOT g.tgisinternal
    """,
    # The service's own trigger functions, bodies included: one replaced by hand with one that
    # does nothing is drift too. (Other functions' EXECUTE grants are provisioning's.)
    "functions": """
        SELECT format('%%s.%%s(%%s)', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid)),
               pg_get_functiondef(p.oid)
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s AND p.prorettype = 'pg_catalog.trigger'::regtype
          AND NOT EXISTS (SELECT FROM pg_depend AS dep
                          WHERE dep.classid = 'pg_proc'::regclass AND dep.objid = p.oid
                            AND dep.deptype = 'e')
    """,
}

Shape = dict[str, dict[str, str]]


@dataclass(frozen=True)
class WrittenShape:
    """A service's ``shape.toml``: the head it was written at, and what the migrations made."""

    head: frozenset[str]
    shape: Shape


def shape_path(service: str) -> Path:
    return MIGRATIONS_DIR / service / SHAPE_FILE


def compared_tables(service: str) -> list[str]:
    """The service's own tables the models declare, and its version table."""
    schema = service_spec(service).name
    tables = declared_metadata(service).tables.values()
    return sorted({*(table.name for table in tables if table.schema == schema), "alembic_version"})


def read_shape(connection: psycopg.Connection, service: str) -> Shape:
    """The service's tables' indexes, constraints, defaults and identities as the database
    holds them, every name in a definition qualified (``search_path`` is ``pg_catalog``)."""
    parameters = {"schema": service_spec(service).name, "tables": compared_tables(service)}
    shape: Shape = {}
    with connection.transaction():
        connection.execute("SET LOCAL search_path TO pg_catalog")
        for kind, sql in _SHAPE_SQL.items():
            rows = connection.execute(sql, parameters).fetchall()
            shape[kind] = {key: " ".join(definition.split()) for key, definition in rows}
    return shape


def load_written(service: str) -> WrittenShape | None:
    path = shape_path(service)
    if not path.exists():
        return None
    data = tomllib.loads(path.read_text())
    return WrittenShape(
        head=frozenset(data.get("head", [])),
        shape={kind: dict(data.get(kind, {})) for kind in KINDS},
    )


def render(service: str, head: Iterable[str], shape: Shape) -> str:
    """``shape.toml``'s text: a header, the head, one table per kind, keys sorted."""
    lines = [
        f"# {service}: the indexes, constraints, column defaults, identity columns and triggers",
        "# of its tables and its schema's trigger functions as its migrations make them at the",
        "# head below. `rose db check` names what a",
        "# database at this head lacks, has more of, or holds otherwise (ops/db/schema_shape.py).",
        "# Written by `python -m ops.db.schema_shape --write --database-url DSN` from databases",
        "# the migrations just made; do not edit by hand (a test fails while it is stale).",
        f"head = {json.dumps(sorted(head))}",
    ]
    for kind in KINDS:
        lines += ["", f"[{kind}]"]
        lines += [
            f"{json.dumps(key)} = {json.dumps(definition)}"
            for key, definition in sorted(shape.get(kind, {}).items())
        ]
    return "\n".join(lines) + "\n"


def differences_between(database: str, expected: Shape, found: Shape) -> list[str]:
    """One line per item the database lacks, has more of, or holds otherwise."""
    lines = []
    for kind, label in KINDS.items():
        made, held = expected.get(kind, {}), found.get(kind, {})
        for key in sorted(made.keys() | held.keys()):
            name = _named(kind, key)
            if key not in held:
                lines.append(
                    f"{database}: {label} {name} is missing (the migrations make it: {made[key]})"
                )
            elif key not in made:
                lines.append(
                    f"{database}: {label} {name} is not made by the migrations (made by hand?): "
                    f"{held[key]}"
                )
            elif made[key] != held[key]:
                lines.append(
                    f"{database}: {label} {name} is {held[key]}, the migrations make {made[key]}"
                )
    return lines


def _named(kind: str, key: str) -> str:
    if kind in ("indexes", "constraints", "triggers"):
        table, name = key.split(" ", 1)
        return f"{name} of {table}"
    return key


def shape_differences(
    topology: Topology, services: Iterable[str], connections: Connections
) -> list[str]:
    """``rose db check``'s lines for the services whose databases are at the head their
    ``shape.toml`` was written at."""
    lines: list[str] = []
    with_migrations = set(services_with_migrations())
    for name in services:
        if name not in with_migrations:
            continue
        database = service_spec(name).database
        written = load_written(name)
        if written is None or written.head != head_revisions(name):
            # The release's own file is missing or stale: nothing to compare with (a packaging
            # or release mistake, never the database's).
            lines.append(
                f"{database}: {shape_path(name)} is "
                f"{'missing' if written is None else 'not at the migrations head'}: its "
                "indexes, constraints and defaults cannot be compared (regenerate it: "
                "python -m ops.db.schema_shape --write)"
            )
            continue
        try:
            connection = connections.get(topology.admin_url(name))
        except psycopg.OperationalError:
            continue  # a database that cannot be reached is a difference already
        if set(versions_in(connection, name)) != written.head:
            continue  # behind (or ahead of) the head: the version check names it
        found = read_shape(connection, name)
        lines += differences_between(database, written.shape, found)
    return lines


def _files_that_differ(topology: Topology) -> dict[str, str]:
    """Each service whose ``shape.toml`` is not what the migrations made in ``topology``'s
    databases, and the text they made (each database must be at its head)."""
    differ = {}
    for name in services_with_migrations():
        with psycopg.connect(topology.admin_url(name), autocommit=True) as connection:
            at = set(versions_in(connection, name))
            if at != head_revisions(name):
                raise SystemExit(
                    f"{service_spec(name).database} is at {sorted(at)}, not at its head "
                    f"{sorted(head_revisions(name))}: migrate a fresh database first"
                )
            text = render(name, at, read_shape(connection, name))
        path = shape_path(name)
        if not path.exists() or path.read_text() != text:
            differ[name] = text
    return differ


def stale_files(topology: Topology) -> list[str]:
    """The services whose ``shape.toml`` ``--write`` would change."""
    return list(_files_that_differ(topology))


def write_files(topology: Topology) -> list[Path]:
    """Write every service's ``shape.toml`` that differs from what the migrations made in
    ``topology``'s databases (just made, each at its head)."""
    written = []
    for name, text in _files_that_differ(topology).items():
        path = shape_path(name)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ops.db.schema_shape",
        description="Write (or check) db/migrations/<service>/shape.toml from databases the "
        "migrations just made.",
    )
    parser.add_argument(
        "--database-url",
        required=True,
        help="Superuser DSN of a server whose service databases were just migrated to head "
        "(e.g. the one `rose up --fresh` made).",
    )
    parser.add_argument("--write", action="store_true", help="Write the files that differ.")
    arguments = parser.parse_args(argv)
    topology = Topology.single_server(arguments.database_url)
    if arguments.write:
        for path in write_files(topology):
            print(f"wrote {path}")
        return
    stale = stale_files(topology)
    for name in stale:
        print(f"{shape_path(name)} is stale: run with --write")
    raise SystemExit(1 if stale else 0)


if __name__ == "__main__":
    main()
