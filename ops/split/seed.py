"""``rose split seed-legacy``: a practice monolith in schema ``legacy`` of db_market, db_blog and
db_cart, from the plain SQL in ``db/legacy`` (schema files, then set-based seed files)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from apps.registry import service_spec
from ops.db.topology import Topology
from ops.split.common import (
    LedgerEntry,
    Say,
    SplitError,
    connect,
    count_rows,
    dropped_records,
    read_ledger,
    run_file,
)
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


def _short_state(entry: LedgerEntry) -> str:
    if entry.syncing:
        return "syncing online"
    if entry.finalized_at is not None:
        return "finalized"
    if entry.finalizing:
        return "finalizing"
    if entry.done:
        return "moved"
    return "started, not finished"


def split_records(topology: Topology) -> tuple[list[str], list[str]]:
    """What the split has recorded that a new practice monolith would contradict: the moves a
    ledger records and that are not aborted, with their state (moved, syncing, finalized, a run
    that did not finish...), and the source databases where finalize recorded dropped tables
    (split.dropped)."""
    moves = []
    for move in MOVES:
        with connect(topology, move.target) as connection:
            entry = read_ledger(connection, move.name)
        if entry is not None and not entry.aborted:
            moves.append(f"{move.name} ({_short_state(entry)})")
    dropped = []
    for service in LEGACY_SERVICES:
        with connect(topology, service) as connection:
            if dropped_records(connection):
                dropped.append(service_spec(service).database)
    return moves, dropped


def _refuse_over_split_records(topology: Topology) -> None:
    """Seeding over them would replace the sources a recorded move came from (verify would then
    call them changed), and --replace would drop the lookups finalize keeps and its records of
    the backups, after which `rose split restore` refuses the genuine archives."""
    moves, dropped = split_records(topology)
    if not moves and not dropped:
        return
    found = []
    if moves:
        found.append(f"the ledgers record move(s) {', '.join(moves)}")
    if dropped:
        found.append(f"{', '.join(dropped)} record tables finalize dropped (split.dropped)")
    raise SplitError(
        f"seed-legacy refused: {' and '.join(found)}; nothing seeded, nothing dropped: a "
        "practice monolith would replace the one the split moved. Go back first (`rose split "
        "abort`, after finalize `rose split restore` each backup then `abort`), or practise "
        "from scratch on a fresh stack (`rose up --fresh --no-demo --only events`, then "
        "seed-legacy: run refuses beside a running service it moves data into)"
    )


def seed_legacy(topology: Topology, scale: int, *, replace: bool, say: Say) -> SeedResult:
    if scale < 1:
        raise SplitError("--scale must be at least 1")
    _refuse_over_split_records(topology)
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
                # The freeze triggers and their function go with the schema (only those of
                # aborted moves can be left: _refuse_over_split_records). split.dropped is empty.
                connection.execute("DROP SCHEMA IF EXISTS legacy CASCADE")
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
    return result
