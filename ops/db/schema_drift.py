"""What a service's schema lacks, or has more of, than its models declare: tables and their
columns, compared by Alembic's own autogenerate (``compare_metadata``), as ``rose db check``
reports them. A database whose revision says "head" can still differ: a migration rewritten
after it ran (audit U1: events 0006 was), or a table made or dropped by hand. Indexes, types and
defaults are left out: the models do not declare every one the migrations make."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from apps.registry import service_spec
from ops.db.migrate import services_with_migrations
from ops.db.topology import Topology

# The kinds of difference reported, as Alembic names them.
_TABLE_AND_COLUMN_KINDS = frozenset({"add_table", "remove_table", "add_column", "remove_column"})


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
                    },
                )
                found = compare_metadata(context, declared_metadata(name))
        except OperationalError:
            continue  # a database that cannot be reached is a difference already
        finally:
            engine.dispose()
        lines += [_line(spec.database, difference) for difference in _flat(found)]
    return lines


def _only_schema(schema: str) -> Any:
    def include(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
        if kind == "schema":
            return name == schema
        return parents.get("schema_name") in (schema, None)

    return include


def _flat(found: list[Any]) -> Iterable[tuple[Any, ...]]:
    """Alembic lists column changes of one table as a nested list; the rest as tuples."""
    for difference in found:
        if isinstance(difference, list):
            yield from _flat(difference)
        elif isinstance(difference, tuple) and difference[0] in _TABLE_AND_COLUMN_KINDS:
            yield difference


def _line(database: str, difference: tuple[Any, ...]) -> str:
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
    _, schema, table, column = difference
    where = f"{database}: column {schema}.{table}.{column.name}"
    if kind == "add_column":
        return f"{where} is missing (the models declare it)"
    return f"{where} is not declared by the models"
