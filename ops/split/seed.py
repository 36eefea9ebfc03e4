"""``rose split seed-legacy``: a practice monolith in schema ``legacy`` of db_market, db_blog and
db_cart, from the plain SQL in ``db/legacy`` (schema files, then set-based seed files)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from apps.registry import service_spec
from ops.db.connections import scalar
from ops.db.topology import Topology
from ops.split.common import Say, SplitError, connect, count_rows, ledger_exists, run_file
from ops.split.moves import LEGACY_DIR, LEGACY_SERVICES, MOVES


@dataclass
class SeedResult:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _legacy_tables(connection: psycopg.Connection[Any]) -> list[str]:
    return [
        row[0]
        for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy' ORDER BY 1"
        )
    ]


def _legacy_rows(topology: Topology, service: str) -> dict[str, int]:
    with connect(topology, service) as connection:
        return {
            table: count_rows(connection, f"legacy.{table}") for table in _legacy_tables(connection)
        }


def moves_recorded(topology: Topology) -> list[str]:
    """Moves some ledger records as started or done."""
    recorded = []
    for move in MOVES:
        with connect(topology, move.target) as connection:
            if ledger_exists(connection) and scalar(
                connection,
                "SELECT EXISTS (SELECT FROM split.ledger WHERE move = %s)",
                (move.name,),
            ):
                recorded.append(move.name)
    return recorded


def seed_legacy(topology: Topology, scale: int, *, replace: bool, say: Say) -> SeedResult:
    if scale < 1:
        raise SplitError("--scale must be at least 1")
    populated = {
        service_spec(service).database: rows
        for service in LEGACY_SERVICES
        if any((rows := _legacy_rows(topology, service)).values())
    }
    if populated and not replace:
        where = ", ".join(populated)
        raise SplitError(
            f"the legacy tables of {where} already hold rows; nothing seeded "
            "(--replace drops schema legacy and seeds again)"
        )
    result = SeedResult()
    started = time.perf_counter()
    for service in LEGACY_SERVICES:
        spec = service_spec(service)
        with connect(topology, service) as connection, connection.transaction():
            if replace:
                # The freeze triggers and their function go with the schema; finalize's records
                # of an earlier monolith's drops would describe tables that are back.
                connection.execute("DROP SCHEMA IF EXISTS legacy CASCADE")
                connection.execute("DROP TABLE IF EXISTS split.dropped")
            run_file(connection, LEGACY_DIR / f"{service}.sql", {"owner": spec.owner_role})
            run_file(connection, LEGACY_DIR / f"seed_{service}.sql", {"scale": str(scale)})
        with connect(topology, service) as connection:
            # Fresh statistics, so plan's and run's joins over the new rows are planned well.
            tables = sql.SQL(", ").join(
                sql.Identifier("legacy", table) for table in _legacy_tables(connection)
            )
            connection.execute(sql.SQL("ANALYZE {}").format(tables))
        for table, count in _legacy_rows(topology, service).items():
            result.rows[f"{spec.database} legacy.{table}"] = count
            say(f"seeded {spec.database} legacy.{table}: {count:,} rows")
    result.seconds = time.perf_counter() - started
    recorded = moves_recorded(topology)
    if recorded:
        say(
            f"note: the ledgers already record move(s) {', '.join(recorded)}; `rose split run` "
            "does not move them again (start from empty targets for another practice round)"
        )
    return result
