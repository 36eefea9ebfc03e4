"""The consumers' SQLAlchemy declarations of their foreign tables say what db/fdw/manifest.toml
declares for their edges: the same columns, in order, with types of the same kind. (Provisioning
creates the foreign tables from the manifest; the apps read them through these declarations.)"""

from __future__ import annotations

import datetime
import decimal
import importlib
import re

import pytest
from sqlalchemy import Table

from ops.db.manifest import Column, load_edges

# Where each consumer declares the foreign tables it reads (modules may serve several consumers).
DECLARED_IN = {
    "apps.common.fdw": ["market", "blog"],
    "apps.blog.models": ["blog"],
    "apps.cart.models": ["cart"],
    "apps.orders.models": ["orders"],
    "apps.market.models": ["market"],
}

# PostgreSQL type (as format_type spells it) -> the Python type its values arrive as.
PYTHON_TYPES = [
    (r"^(bigint|integer|smallint)$", int),
    (r"^(text|character varying|character)(\(\d+\))?$", str),
    (r"^numeric(\(\d+,\d+\))?$", decimal.Decimal),
    (r"^timestamp with time zone$", datetime.datetime),
    (r"^boolean$", bool),
    (r"^jsonb?$", object),  # any JSON value
]


def python_type(column: Column) -> type:
    for pattern, kind in PYTHON_TYPES:
        if re.match(pattern, column.type):
            return kind
    raise AssertionError(f"no Python type known for {column}")


def foreign_tables() -> list[tuple[str, str, Table]]:
    """(module, consumer, table) for every Table in a consumer's module whose schema is one of
    its providers."""
    found = []
    edges = load_edges()
    for module_name, consumers in DECLARED_IN.items():
        module = importlib.import_module(module_name)
        tables = [value for value in vars(module).values() if isinstance(value, Table)]
        for consumer in consumers:
            providers = {edge.provider for edge in edges if edge.consumer == consumer}
            found += [
                (module_name, consumer, table) for table in tables if table.schema in providers
            ]
    return found


def test_every_consumer_with_declarations_is_found():
    consumers = {consumer for _, consumer, _ in foreign_tables()}
    assert consumers == {"market", "blog", "cart", "orders"}


@pytest.mark.parametrize(
    ("module", "consumer", "table"),
    foreign_tables(),
    ids=lambda value: value.fullname if isinstance(value, Table) else str(value),
)
def test_foreign_table_declaration_matches_the_manifest(module: str, consumer: str, table: Table):
    edge = next(e for e in load_edges() if (e.consumer, e.provider) == (consumer, table.schema))
    assert table.name in edge.views, f"{module}: {table.fullname} is not a view of edge {edge}"
    declared = edge.columns[table.name]
    assert [column.name for column in table.columns] == [column.name for column in declared], (
        f"{module}: {table.fullname} declares other columns than edge {edge}"
    )
    for column, manifest_column in zip(table.columns, declared, strict=True):
        assert column.type.python_type is python_type(manifest_column), (
            f"{module}: {table.fullname}.{column.name} is {column.type}, "
            f"the manifest says {manifest_column.type}"
        )
