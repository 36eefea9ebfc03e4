"""The read edges of db/fdw/manifest.toml and the providers' contracts agree: every column an
edge declares is a column of the provider's export view in its contract, with the same type,
and the consumer's foreign table (built from the contract) has exactly the edge's columns."""

from __future__ import annotations

import importlib

import pytest
from sqlalchemy import Table

from apps.registry import CONTRACTS
from ops.db.manifest import Edge, load_edges

EDGES = load_edges()


@pytest.mark.parametrize("edge", EDGES, ids=lambda edge: f"{edge.consumer}<-{edge.provider}")
def test_edge_columns_are_the_provider_contract_columns(edge: Edge):
    contract = CONTRACTS[edge.provider]
    for view_name, columns in edge.columns.items():
        view = contract.view(view_name)
        for column in columns:
            assert view.column(column.name).sql_type == column.type, (
                f"{edge}: {view_name}.{column.name}"
            )


def consumer_tables(consumer: str) -> dict[str, Table]:
    module = importlib.import_module(f"apps.{consumer}.models")
    return {
        value.fullname: value
        for value in vars(module).values()
        if isinstance(value, Table) and value.schema in CONTRACTS and value.schema != consumer
    }


@pytest.mark.parametrize("edge", EDGES, ids=lambda edge: f"{edge.consumer}<-{edge.provider}")
def test_consumer_foreign_tables_read_exactly_the_edge(edge: Edge):
    tables = consumer_tables(edge.consumer)
    for view_name, columns in edge.columns.items():
        table = tables.get(f"{edge.provider}.{view_name}")
        if table is None:
            continue  # an edge may grant a view the consumer's code does not read (yet)
        assert [column.name for column in table.columns] == [c.name for c in columns], (
            f"{edge.consumer}: {table.fullname}"
        )


def test_every_foreign_table_of_a_consumer_is_an_edge():
    edges = {(edge.consumer, edge.provider, view) for edge in EDGES for view in edge.columns}
    for consumer in CONTRACTS:
        for table in consumer_tables(consumer).values():
            assert (consumer, table.schema, table.name) in edges, table.fullname
