"""``rose split abort``: undo moves that are not finalized, so the monolith runs on as before.

Per move, in this order (each step idempotent, so a re-run after a crash anywhere finishes):
1. In ONE transaction of the target: delete exactly the rows the move inserted (the ledger's
   ids), refusing if the target changed since the move committed (the services wrote to it:
   deleting would lose their writes), and mark the move aborted in the ledger.
2. Lift the move's freeze from its sources (one transaction per source database). A table
   another move still freezes stays frozen by it, and the message says so.
The sources were never written by the split, so once unfrozen they are exactly as before.
A finalized move (any of its sources dropped) cannot be aborted: its rows are in the backups
(docs/runbook-split.md tells how to restore them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from apps.registry import service_spec
from ops.db.topology import Topology
from ops.split.common import (
    FaultHook,
    LedgerEntry,
    Say,
    SplitError,
    connect,
    crash_from_environment,
    ledger_exists,
    ledger_of,
    operator,
    read_ledger,
    refuse_while_services_run,
)
from ops.split.finalize import dropped_of, source_records
from ops.split.freeze import unfreeze
from ops.split.moves import Move
from ops.split.sync import stop_sync
from ops.split.verify import verify_against_commit

LOCK_TIMEOUT = "10s"


@dataclass
class AbortResult:
    aborted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    not_aborted: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)


def _delete_moved_rows(
    target: psycopg.Connection[Any], move: Move, ids: dict[str, str]
) -> dict[str, int]:
    """Delete the rows the move inserted, children first (the target tables are listed
    parents first)."""
    deleted = {}
    for table in reversed(move.target_tables):
        ranges = ids.get(table)
        if not ranges or ranges == "{}":
            deleted[table] = 0
            continue
        schema, name = table.split(".")
        cursor = target.execute(
            sql.SQL("DELETE FROM {} WHERE id <@ %s::int8multirange").format(
                sql.Identifier(schema, name)
            ),
            (ranges,),
        )
        deleted[table] = cursor.rowcount
    return deleted


def _delete_synced_rows(target: psycopg.Connection[Any], move: Move) -> dict[str, int]:
    """Every row of the move's target tables, children first (what an online sync put there)."""
    deleted = {}
    for table in reversed(move.target_tables):
        cursor = target.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(*table.split("."))))
        deleted[table] = cursor.rowcount
    return deleted


SHOWN_REFERRING = 12


def _rows_referring(
    target: psycopg.Connection[Any], move: Move, ids: dict[str, str] | None
) -> list[str]:
    """Rows of tables outside the move that refer (by a foreign key) to rows abort would delete
    (``ids``: the ledger's, per target table; None: every row, an online sync's): the service's
    own records since the move (a refund of a moved order). Deleting would take them with it
    (ON DELETE CASCADE) or fail on them."""
    found: list[str] = []
    for table in move.target_tables:
        schema, name = table.split(".")
        keys = target.execute(
            """
            SELECT child_ns.nspname, child.relname,
                   array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k (num, pos)
                         JOIN pg_attribute AS a ON a.attrelid = con.conrelid
                          AND a.attnum = k.num ORDER BY k.pos),
                   array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k (num, pos)
                         JOIN pg_attribute AS a ON a.attrelid = con.confrelid
                          AND a.attnum = k.num ORDER BY k.pos),
                   EXISTS (SELECT FROM pg_attribute AS a WHERE a.attrelid = con.conrelid
                           AND a.attname = 'id' AND NOT a.attisdropped)
            FROM pg_constraint AS con
            JOIN pg_class AS child ON child.oid = con.conrelid
            JOIN pg_namespace AS child_ns ON child_ns.oid = child.relnamespace
            WHERE con.contype = 'f' AND con.confrelid = to_regclass(%s)
            ORDER BY 1, 2, con.conname
            """,
            (table,),
        ).fetchall()
        for child_schema, child_name, columns, referred, has_id in keys:
            if f"{child_schema}.{child_name}" in move.target_tables:
                continue  # the move's own rows: deleted with the others
            joined = sql.SQL(" AND ").join(
                sql.SQL("c.{} = p.{}").format(sql.Identifier(column), sql.Identifier(key))
                for column, key in zip(columns, referred, strict=True)
            )
            shown = sql.SQL("array_agg(c.id ORDER BY c.id)" if has_id else "NULL::bigint[]")
            query = sql.SQL("SELECT count(*), {} FROM {} AS c JOIN {} AS p ON {}").format(
                shown,
                sql.Identifier(child_schema, child_name),
                sql.Identifier(schema, name),
                joined,
            )
            params: tuple[str, ...] = ()
            if ids is not None:
                ranges = ids.get(table)
                if not ranges or ranges == "{}":
                    continue
                query += sql.SQL(" WHERE p.id <@ %s::int8multirange")
                params = (ranges,)
            count, child_ids = target.execute(query, params).fetchone() or (0, None)
            if not count:
                continue
            listed = ""
            if child_ids:
                more = f" and {count - SHOWN_REFERRING:,} more" if count > SHOWN_REFERRING else ""
                listed = f" (ids {', '.join(str(i) for i in child_ids[:SHOWN_REFERRING])}{more})"
            found.append(
                f"{child_schema}.{child_name}: {count:,} rows{listed} refer to rows of {table} "
                "the move inserted"
            )
    return found


def _refuse_referring(move: Move, found: list[str]) -> None:
    if found:
        raise SplitError(
            f"{move.name}: {'; '.join(found)}: the service recorded them since the move, and "
            "deleting the moved rows would take them with them (or fail on them); the move is "
            "left as it was. Settle those rows in the service first (a refund owes a buyer "
            "money), then abort again"
        )


def abort_move(topology: Topology, move: Move, say: Say, fault: FaultHook) -> dict[str, int]:
    if dropped_of(move, source_records(topology)):
        raise SplitError(
            f"{move.name}: finalized (its sources are dropped): it cannot be aborted; its rows "
            "are in the backups finalize took (docs/runbook-split.md: restoring)"
        )
    deleted: dict[str, int] = {}
    already = True  # no ledger: the move never started
    with connect(topology, move.target) as target:
        if ledger_exists(target):
            with target.transaction():
                target.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
                # Waits for a run of the move that is still going, then sees its outcome.
                ledger = read_ledger(target, move.name, lock=True)
                if ledger is not None and ledger.finalized_at is not None:
                    raise SplitError(f"{move.name}: finalized: it cannot be aborted")
                if ledger is not None and ledger.cut_over_unrecorded:
                    raise SplitError(f"{move.name}: {ledger.unrecorded_cutover()}; then abort")
                if ledger is not None and ledger.done:
                    if not ledger.checksums or ledger.inserted_ids is None:
                        raise SplitError(
                            f"{move.name}: the ledger does not record which rows the move "
                            "inserted (it ran with an earlier version); abort it by hand"
                        )
                    target.execute(
                        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                            sql.SQL(", ").join(
                                sql.Identifier(*table.split(".")) for table in move.target_tables
                            )
                        )
                    )
                    changed = verify_against_commit(target, move, ledger, strict=True).problems
                    if changed:
                        raise SplitError(
                            f"{move.name}: {'; '.join(changed)}: something wrote to the target "
                            "after the move, and abort would lose it; the move is left as it was"
                        )
                    _refuse_referring(move, _rows_referring(target, move, ledger.inserted_ids))
                    deleted = _delete_moved_rows(target, move, ledger.inserted_ids)
                    expected = {table: int(rows) for table, rows in (ledger.inserted or {}).items()}
                    if deleted != expected:
                        raise SplitError(
                            f"{move.name}: deleting the moved rows found {deleted}, the ledger "
                            f"records {expected}; the move is left as it was"
                        )
                synced = ledger is not None and not ledger.done and ledger.sync_started_at
                if synced:
                    # An online sync not cut over: its targets were empty when it started and
                    # nothing but the sync writes them before the cutover.
                    _refuse_referring(move, _rows_referring(target, move, None))
                    deleted = _delete_synced_rows(target, move)
                # Aborted and not run since: a run that failed or crashed after an abort is
                # that run's (started, not finished), and is recorded as aborted again.
                already = ledger is None or (ledger.aborted and not synced)
                if not already:
                    target.execute(
                        """
                        UPDATE split.ledger
                        SET finished_at = NULL, seconds = NULL, source_rows = NULL,
                            moved_rows = NULL, collapsed_rows = NULL, skipped_rows = NULL,
                            reasons = NULL, inserted = NULL, checksum = NULL, checksums = NULL,
                            inserted_ids = NULL, verified_at = NULL, verification = NULL,
                            verified_by = NULL, finalizing_at = NULL, backups = NULL,
                            aborted_at = clock_timestamp(), aborted_by = %s,
                            sync_started_at = NULL, snapshot_at = NULL, write_pause = NULL,
                            sync_definitions = NULL
                        WHERE move = %s
                        """,
                        (operator(), move.name),
                    )
    rows = ", ".join(f"{count:,} from {table}" for table, count in deleted.items() if count)
    database = service_spec(move.target).database
    if already:
        say(f"{move.name}: nothing of it in {database} (not started, or aborted before)")
    else:
        say(f"{move.name}: deleted {rows or 'nothing'} in {database}; recorded as aborted")
    fault("abort", "after-target")
    removed = stop_sync(topology, move)
    if removed:
        say(f"{move.name}: removed the change capture from {', '.join(removed)}")
    unfreeze(
        topology,
        [move.name],
        {
            service: [source.table for source in move.sources_in(service)]
            for service in move.source_services
        },
        say,
    )
    fault("abort", "after-unfreeze")
    return deleted


ABORT_ADVICE = (
    "Stop them first: abort empties their targets and makes the monolith writable again, so "
    "what a service wrote after it would be in neither, and a service still serving would "
    "serve without the moved rows. Nothing was changed."
)


def _holds_rows(ledger: LedgerEntry | None) -> bool:
    """Whether abort would delete rows of the move from its target (moved, cut over, or
    syncing; neither aborted nor finalized)."""
    return (
        ledger is not None
        and not ledger.aborted
        and ledger.finalized_at is None
        and (ledger.done or ledger.syncing)
    )


def abort(
    topology: Topology, moves: list[Move], say: Say, fault: FaultHook = crash_from_environment
) -> AbortResult:
    """Abort each of ``moves`` (the last ones first); a move that cannot be aborted is refused
    with its reason and the others go on."""
    refuse_while_services_run(
        topology,
        [move for move in moves if _holds_rows(ledger_of(topology, move))],
        "rose split abort",
        ABORT_ADVICE,
    )
    result = AbortResult()
    for move in reversed(moves):
        try:
            deleted = abort_move(topology, move, say, fault)
        except (SplitError, psycopg.Error) as exc:
            result.refused.append(
                str(exc) if isinstance(exc, SplitError) else f"{move.name}: {exc}"
            )
            result.not_aborted.append(move.name)
            continue
        result.aborted.append(move.name)
        for table, count in deleted.items():
            result.deleted[table] = count
    return result
