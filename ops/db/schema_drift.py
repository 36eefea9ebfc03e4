"""What a service's schema lacks, has more of, or has otherwise than its models declare: tables,
their columns, and each column's type and nullability, compared by Alembic's own autogenerate
(``compare_metadata``, ``compare_type`` on), as ``rose db check`` reports them. A database whose
revision says "head" can still differ: a migration rewritten after it ran (audit U1: events 0006
was), a table made or dropped by hand, a column altered by hand (a narrower ``varchar`` than the
app accepts is a 500 where a 422 was meant), or a model changed without its migration. Indexes,
constraints and defaults are left out: the models do not declare every one the migrations make."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, MetaData, create_engine, pool
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import TypeEngine

from apps.registry import service_spec
from ops.db.migrate import services_with_migrations
from ops.db.topology import Topology

# The kinds of difference reported, as Alembic names them.
_REPORTED_KINDS = frozenset(
    {
        "add_table",
        "remove_table",
        "add_column",
        "remove_column",
        "modify_type",
        "modify_nullable",
    }
)


def declared_metadata(service: str) -> MetaData:
    """The service's models' metadata (what its migrations' env.py compares with)."""
    metadata = importlib.import_module(f"apps.{service}.models").metadata
    if not isinstance(metadata, MetaData):
        raise TypeError(f"apps.{service}.models.metadata is not a MetaData")
    return metadata


def schema_differences(topology: Topology, services: Iterable[str]) -> list[str]:
    """One line per table or column the service's schema lacks or has beyond its models."""
    lines: list[str] = []
    with_migrations = set(services_with_migrations())
    for name in services:
        if name not in with_migrations:
            continue
        spec = service_spec(name)
        url = make_url(topology.admin_url(name)).set(drivername="postgresql+psycopg")
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "include_schemas": True,
                        "include_name": _only_schema(spec.name),
                        "version_table_schema": spec.name,
                        "compare_type": _types_differ,
                    },
                )
                found = compare_metadata(context, declared_metadata(name))
                lines += [
                    _line(spec.database, difference, connection.dialect)
                    for difference in _flat(found)
                ]
        except OperationalError:
            continue  # a database that cannot be reached is a difference already
        finally:
            engine.dispose()
    return lines


def _only_schema(schema: str) -> Any:
    def include(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
        if kind == "schema":
            return name == schema
        return parents.get("schema_name") in (schema, None)

    return include


def _types_differ(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_type: TypeEngine[Any],
    metadata_type: TypeEngine[Any],
) -> bool | None:
    """Alembic's comparison (None), and one case it lets pass: it compares a type's arguments
    only where both sides have them, so a column the models bound (``numeric(12, 2)``,
    ``varchar(64)``) that the database holds unbounded (``numeric``, ``varchar``) would be
    "the same". The bound is what the app relies on (amounts rounded to cents, MAX_AMOUNT)."""
    dialect = context.dialect
    if _has_arguments(metadata_type, dialect) and not _has_arguments(inspected_type, dialect):
        return True
    return None


def _has_arguments(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    return "(" in type_.compile(dialect=dialect)


def _flat(found: list[Any]) -> Iterable[tuple[Any, ...]]:
    """Alembic lists column changes of one table as a nested list; the rest as tuples."""
    for difference in found:
        if isinstance(difference, list):
            yield from _flat(difference)
        elif isinstance(difference, tuple) and difference[0] in _REPORTED_KINDS:
            yield difference


def _line(database: str, difference: tuple[Any, ...], dialect: Dialect) -> str:
    kind = difference[0]
    if kind == "add_table":
        table = difference[1]
        return f"{database}: table {table.schema}.{table.name} is missing (the models declare it)"
    if kind == "remove_table":
        table = difference[1]
        return (
            f"{database}: table {table.schema}.{table.name} is not declared by the models "
            "(made by hand, or by a migration since rewritten)"
        )
    if kind in ("modify_type", "modify_nullable"):
        # (kind, schema, table, column name, what else it has, the database's, the models')
        _, schema, table, name, _, in_database, declared = difference
        where = f"{database}: column {schema}.{table}.{name}"
        if kind == "modify_type":
            return (
                f"{where} is {in_database.compile(dialect=dialect)}, "
                f"the models declare {declared.compile(dialect=dialect)}"
            )
        if in_database:
            return f"{where} is nullable, the models declare it NOT NULL"
        return f"{where} is NOT NULL, the models declare it nullable"
    _, schema, table, column = difference
    where = f"{database}: column {schema}.{table}.{column.name}"
    if kind == "add_column":
        return f"{where} is missing (the models declare it)"
    return f"{where} is not declared by the models"
