"""``rose split verify`` and ``rose split finalize``.

Verify compares, for each moved move, its sources with its target:
- the accounting: the source tables still hold the rows the move read (they are frozen), and
  every one of them is moved, collapsed or skipped with a reason (the ledger lists the ids);
- per check view (``db/migrations/split/checksums``), the row counts and the order-independent
  checksums of both sides, under the same fixed session settings; when they differ, per-range
  buckets locate the rows.
The result goes into the ledger (``verified_at`` only when nothing differs).

Finalize drops the legacy tables the moves read, only when every move is verified; the ledgers
stay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from apps.common.services import service_spec
from ops.split_checksum import Checksum, Located, checksum, locate
from ops.split_db import (
    LedgerEntry,
    Say,
    as_json,
    connect,
    count_rows,
    read_ledger,
    run_file,
    table_exists,
)
from ops.split_moves import LEGACY_SERVICES, MOVES, SPLIT_DIR, Move, tables_read_in
from ops.topology import Topology


@dataclass
class CheckResult:
    name: str
    target_table: str
    bucket: str
    source: Checksum
    target: Checksum
    located: list[Located] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.source == self.target

    def describe(self) -> str:
        if self.ok:
            return f"{self.target_table}: {self.target.rows:,} rows, checksums match"
        where = "; ".join(found.describe(self.bucket) for found in self.located)
        return (
            f"{self.target_table}: source {self.source.rows:,} rows, target "
            f"{self.target.rows:,} rows, checksums differ; differences at {where or '?'}"
        )


@dataclass
class MoveVerification:
    move: Move
    ledger: LedgerEntry | None
    problems: list[str] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    source_rows_now: dict[str, int] = field(default_factory=dict)
    finalized: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.ledger is not None
            and self.ledger.done
            and not self.problems
            and all(check.ok for check in self.checks)
        )

    def differences(self) -> list[str]:
        found = list(self.problems)
        found += [check.describe() for check in self.checks if not check.ok]
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source_rows_now": self.source_rows_now,
            "problems": self.problems,
            "checks": {
                check.name: {
                    "target_table": check.target_table,
                    "source": check.source.as_dict(),
                    "target": check.target.as_dict(),
                    "ok": check.ok,
                    "differences": [
                        {
                            "bucket": check.bucket,
                            "from": found.low,
                            "to": found.high,
                            "source_rows": found.source.rows,
                            "target_rows": found.target.rows,
                        }
                        for found in check.located
                    ],
                }
                for check in self.checks
            },
        }


def _listed_rows(ledger: LedgerEntry) -> list[tuple[str, int, str, str]]:
    """Every source row the ledger lists, as (table, id, outcome, reason)."""
    rows = []
    for outcome, reasons in (ledger.reasons or {}).items():
        for reason, entry in reasons.items():
            for table, ids in entry["rows"].items():
                rows += [(table, source_id, outcome, reason) for source_id in ids]
    return rows


def _accounting_problems(ledger: LedgerEntry, source_rows_now: dict[str, int]) -> list[str]:
    problems = []
    now = sum(source_rows_now.values())
    if now != ledger.source_rows:
        tables = ", ".join(f"{table} {rows:,}" for table, rows in source_rows_now.items())
        problems.append(
            f"the source tables hold {now:,} rows now ({tables}); the move read "
            f"{ledger.source_rows:,}: they changed since (were they unfrozen?)"
        )
    accounted = (ledger.moved_rows or 0) + (ledger.collapsed_rows or 0) + (ledger.skipped_rows or 0)
    if accounted != ledger.source_rows:
        problems.append(
            f"the ledger accounts for {accounted:,} of {ledger.source_rows:,} source rows"
        )
    reasons = ledger.reasons or {}
    listed = sum(
        len(ids)
        for outcome in ("collapsed", "skipped")
        for entry in reasons.get(outcome, {}).values()
        for ids in entry["rows"].values()
    )
    expected_listed = (ledger.collapsed_rows or 0) + (ledger.skipped_rows or 0)
    if listed != expected_listed:
        problems.append(
            f"the ledger lists {listed:,} rows not moved as they were, "
            f"but counts {expected_listed:,}"
        )
    return problems


@contextmanager
def _source_sessions(
    topology: Topology, move: Move, ledger: LedgerEntry
) -> Iterator[list[psycopg.Connection[Any]]]:
    """One session per source database, with the move's check views and split_listed filled."""
    listed = _listed_rows(ledger)
    with ExitStack() as stack:
        sessions = []
        for service in move.checked_in:
            session = stack.enter_context(connect(topology, service))
            run_file(session, move.checksum_file(service))
            if table_exists(session, "pg_temp.split_listed"):
                session.execute("TRUNCATE split_listed")
                with (
                    session.cursor() as cursor,
                    cursor.copy(
                        "COPY split_listed (source_table, source_id, outcome, reason) FROM STDIN"
                    ) as copy,
                ):
                    for row in listed:
                        copy.write_row(row)
            sessions.append(session)
        yield sessions


def verify_move(topology: Topology, move: Move) -> MoveVerification:
    with connect(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
        result = MoveVerification(move=move, ledger=ledger)
        if ledger is None or not ledger.done:
            result.problems.append("not moved yet (`rose split run`)")
            return result
        if ledger.finalized_at is not None:
            # The sources are gone: the last verification before finalize stands.
            result.finalized = True
            return result
        for service in move.source_services:
            with connect(topology, service) as source:
                for table in move.sources_in(service):
                    if not table.moved:
                        continue
                    if not table_exists(source, f"legacy.{table.table}"):
                        result.problems.append(f"source table {table} is gone")
                    else:
                        result.source_rows_now[str(table)] = count_rows(
                            source, f"legacy.{table.table}"
                        )
        if result.problems:
            return result
        result.problems += _accounting_problems(ledger, result.source_rows_now)
        run_file(target, move.checksum_file("target"))
        with _source_sessions(topology, move, ledger) as sources:
            for check in move.checks:
                source_sum, source_low, source_high = checksum(sources, check.view)
                target_sum, target_low, target_high = checksum([target], check.view)
                found = CheckResult(
                    check.name, check.target_table, check.bucket, source_sum, target_sum
                )
                if not found.ok:
                    lows = [value for value in (source_low, target_low) if value is not None]
                    highs = [value for value in (source_high, target_high) if value is not None]
                    found.located = locate(sources, [target], check.view, min(lows), max(highs))
                result.checks.append(found)
        target.execute(
            """
            UPDATE split.ledger
            SET verified_at = CASE WHEN %s THEN clock_timestamp() END, verification = %s
            WHERE move = %s
            """,
            (result.ok, as_json(result.as_json()), move.name),
        )
    return result


def verify_moves(topology: Topology, moves: list[Move]) -> list[MoveVerification]:
    return [verify_move(topology, move) for move in moves]


# -- finalize ------------------------------------------------------------------------------------
@dataclass
class FinalizeResult:
    refused: list[str] = field(default_factory=list)
    already_finalized: bool = False
    dropped: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)


def _legacy_tables(connection: psycopg.Connection[Any]) -> list[str]:
    return [
        row[0]
        for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy' ORDER BY 1"
        )
    ]


def finalize(topology: Topology, say: Say) -> FinalizeResult:
    result = FinalizeResult()
    ledgers: dict[str, LedgerEntry | None] = {}
    for move in MOVES:
        with connect(topology, move.target) as target:
            ledgers[move.name] = read_ledger(target, move.name)
    for move in MOVES:
        ledger = ledgers[move.name]
        if ledger is None or not ledger.done:
            result.refused.append(f"{move.name}: not moved")
        elif ledger.verified_at is None:
            why = (
                "the last verify found differences"
                if ledger.verification is not None
                else "moved, not verified"
            )
            result.refused.append(f"{move.name}: {why}")
    if result.refused:
        return result
    result.already_finalized = all(
        ledger is not None and ledger.finalized_at is not None for ledger in ledgers.values()
    )
    # Recorded before dropping: verify then reports the moves as finalized, never as sources
    # gone, and a finalize interrupted between the drops finishes on the next run.
    for move in MOVES:
        with connect(topology, move.target) as target:
            target.execute(
                "UPDATE split.ledger SET finalized_at = coalesce(finalized_at, "
                "clock_timestamp()) WHERE move = %s",
                (move.name,),
            )
    for service in LEGACY_SERVICES:
        spec = service_spec(service)
        read = tables_read_in(service)
        with connect(topology, service) as source:
            before = _legacy_tables(source)
            run_file(
                source,
                SPLIT_DIR / "drop_sources.sql",
                {"owner": spec.owner_role, "tables": ",".join(read)},
            )
            after = _legacy_tables(source)
        result.dropped[spec.database] = [table for table in before if table not in after]
        result.kept[spec.database] = after
        for table in result.dropped[spec.database]:
            say(f"dropped {spec.database} legacy.{table}")
        for table in after:
            say(
                f"kept {spec.database} legacy.{table}: no move of the split reads it "
                "(drop it by hand once nothing needs it)"
            )
    return result
