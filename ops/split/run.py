"""``rose split plan`` and ``rose split run``.

A move, in order: freeze its source tables (committed in the source database, so the monolith can
no longer write them); then ONE transaction in the target database, as the target's owner:
stage the source rows (psycopg streamed binary COPY from ``COPY (SELECT ...) TO STDOUT`` of the
source into ``COPY stage_<table> FROM STDIN``), classify and apply them with the move's SQL file,
check that every source row got one outcome and that every planned row was inserted, fix the
sequences (in the file), checksum the target, and record the move in the ledger. A crash
anywhere before the commit leaves nothing of the move in the target; the next run starts it
again (the freeze is idempotent). A move the ledger records as finished is never run again.

``plan`` does the same staging and classification in a transaction that is read-only from the
classification on and always rolled back, without freezing anything.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Copy, IsolationLevel, pq, sql

from apps.registry import service_spec
from ops.db.connections import one_row, scalar
from ops.db.topology import Topology
from ops.split.checksum import checksum
from ops.split.common import (
    DEFAULT_JOBS,
    FaultHook,
    LedgerEntry,
    Say,
    SplitError,
    as_json,
    count_rows,
    crash_from_environment,
    databases_of,
    ensure_ledger,
    execute_sql,
    ledger_of,
    mark_started,
    open_sessions,
    read_ledger,
    refuse_while_services_run,
    reused_sessions,
    run_file,
    session,
    submit_in_context,
    table_exists,
    transform_parts,
)
from ops.split.freeze import FREEZE_LOCK_TIMEOUT, freeze
from ops.split.moves import SPLIT_DIR, Move, SourceTable
from ops.split.verify import (
    MoveVerification,
    SideChecksum,
    compare_with_sources,
    record_verification,
)

OUTCOME_FILE = SPLIT_DIR / "outcome.sql"
COPY_BATCH_BYTES = 1 << 20
# Rows to insert from which a move's bulk load (indexes and keys of empty targets dropped for the
# insert, built once after it) pays for itself: below, dropping and building them again costs
# more than keeping them (cart, 4,658 rows: 0.12 s with it, 0.11 s without; orders, 34,820:
# 0.45 s with it, 0.56 s without).
BULK_LOAD_MIN_ROWS = 10_000


def _quiet(_: str) -> None:
    return None


@dataclass
class Outcome:
    """What the classification decided for every staged row of a move's moved tables."""

    staged: dict[str, int]
    by_table: dict[str, dict[str, int]]
    # {"skipped": {reason: {"count": n, "rows": {table: [ids]}}}, "collapsed": ..., "moved": ...}
    reasons: dict[str, dict[str, dict[str, Any]]]
    planned: dict[str, int]

    def total(self, outcome: str) -> int:
        return sum(counts.get(outcome, 0) for counts in self.by_table.values())

    @property
    def source_rows(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_table.values())


@dataclass
class MoveReport:
    move: Move
    done_before: LedgerEntry | None = None
    outcome: Outcome | None = None
    inserted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # Sources against target, compared in the move's transaction before its commit
    # (``run_all(..., verify=True)``).
    verification: MoveVerification | None = None

    @property
    def rows_per_second(self) -> float:
        if self.outcome is None or self.seconds <= 0:
            return 0.0
        return self.outcome.source_rows / self.seconds


@dataclass
class MovePlan:
    move: Move
    ledger: LedgerEntry | None
    target_rows: dict[str, int]
    source_rows: dict[str, int] = field(default_factory=dict)
    missing_sources: list[str] = field(default_factory=list)
    outcome: Outcome | None = None


# -- staging -------------------------------------------------------------------------------------
def _source_columns(source: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    rows = source.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute AS a
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (f"legacy.{table}",),
    ).fetchall()
    return [(name, type_name) for name, type_name in rows]


def copy_table(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    table: SourceTable,
    where: str | None = None,
    params: dict[str, Any] | None = None,
) -> int:
    """Stream one legacy table (its rows ``where`` holds, with ``params``: `rose split sync`)
    into its staging table. The staging table has the source's column types, so the binary
    format needs no conversion."""
    columns = _source_columns(source, table.table)
    names = sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns)
    target.execute(
        sql.SQL("CREATE TEMP TABLE {stage} ({columns}) ON COMMIT DROP").format(
            stage=sql.Identifier(table.stage),
            columns=sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_name))
                for name, type_name in columns
            ),
        )
    )
    read = sql.SQL(
        "COPY (SELECT {names} FROM legacy.{table} WHERE {where}) TO STDOUT (FORMAT BINARY)"
    ).format(names=names, table=sql.Identifier(table.table), where=sql.SQL(where or "true"))
    write = sql.SQL("COPY {stage} ({names}) FROM STDIN (FORMAT BINARY)").format(
        stage=sql.Identifier(table.stage), names=names
    )
    with source.cursor() as reader, target.cursor() as writer:
        with reader.copy(read, params) as rows_out, writer.copy(write) as rows_in:
            _relay(source, rows_out, rows_in)
        return writer.rowcount


def _relay(source: psycopg.Connection[Any], rows_out: Copy, rows_in: Copy) -> None:
    """Pass a binary COPY from the source on to the target. The source sends a message per
    row: written on in batches (a third cheaper than a write per row), and the rows libpq has
    already received are taken from it directly (psycopg's ``read`` runs its wait machinery for
    each row: half the CPU of the relay); ``read`` only to wait for more."""
    libpq = source.pgconn
    batch = bytearray()
    while True:
        received, row = libpq.get_copy_data(1)
        if received > 0:
            batch += row
        elif received == 0:
            # Nothing received yet: psycopg waits for the next row (or the end: b"").
            waited = rows_out.read()
            if not waited:
                break
            batch += waited
        else:
            # The end of the data: libpq holds the COPY's final result (its error, if any).
            _finish_copy_out(source)
            break
        if len(batch) >= COPY_BATCH_BYTES:
            rows_in.write(batch)
            batch = bytearray()
    if batch:
        rows_in.write(batch)


def _finish_copy_out(source: psycopg.Connection[Any]) -> None:
    """Collect the final result of a COPY TO whose end :func:`_relay` read from libpq itself,
    raising its error. The result follows the end of the data, nearly always in the same read;
    when it has not arrived, wait for it in ``poll`` (which lets the other moves' threads run,
    as a blocking libpq call might not)."""
    libpq = source.pgconn
    waiting = select.poll()
    waiting.register(libpq.socket, select.POLLIN)
    while libpq.is_busy():
        waiting.poll()
        libpq.consume_input()
    results = []
    while (result := libpq.get_result()) is not None:
        results.append(result)
    for result in results:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=source.info.encoding)


@contextmanager
def source_snapshot(topology: Topology, service: str) -> Iterator[psycopg.Connection[Any]]:
    """A read-only repeatable-read transaction in ``service``'s database: one snapshot."""
    with session(topology, service) as source:
        source.isolation_level = IsolationLevel.REPEATABLE_READ
        source.read_only = True
        with source.transaction():
            yield source


def stage_sources(
    topology: Topology, move: Move, target: psycopg.Connection[Any], say: Say
) -> dict[str, int]:
    """Copy every source table of ``move`` into the target's transaction. The tables of one
    source database are read in one repeatable-read snapshot."""
    staged: dict[str, int] = {}
    for service in move.source_services:
        with source_snapshot(topology, service) as source:
            for table in move.sources_in(service):
                started = time.perf_counter()
                staged[str(table)] = copy_table(source, target, table)
                elapsed = time.perf_counter() - started
                say(f"{move.name}: copied {staged[str(table)]:,} rows of {table} ({elapsed:.2f} s)")
    return staged


def missing_sources(topology: Topology, move: Move) -> list[str]:
    missing = []
    for service in move.source_services:
        with session(topology, service) as source:
            missing += [
                str(table)
                for table in move.sources_in(service)
                if not table_exists(source, f"legacy.{table.table}")
            ]
    return missing


# -- classification ------------------------------------------------------------------------------
def classify(target: psycopg.Connection[Any], move: Move, *, read_only: bool) -> None:
    parts = transform_parts(move.transform_file)
    run_file(target, OUTCOME_FILE)
    execute_sql(target, parts.setup)
    if read_only:
        # From here on the transaction cannot write anything but temporary tables.
        target.execute("SET LOCAL transaction_read_only = on")
    try:
        execute_sql(target, parts.classify)
    except psycopg.errors.RaiseException as exc:
        # A refusal the move's file raises itself (a legacy row that needs a person's decision):
        # its own words, without the PL/pgSQL context line.
        raise SplitError(str(exc.diag.message_primary)) from exc


def read_outcome(
    target: psycopg.Connection[Any], move: Move, staged: dict[str, int], *, ids_staged: bool = True
) -> Outcome:
    """What split_outcomes says, counted, refused unless every staged row of the move's moved
    tables got exactly one outcome. ``ids_staged``: the staged rows are in the stage tables (not
    so for the cutover's record, read from split.sync_outcome, whose key allows one outcome per
    row: the counts are compared there)."""
    by_table: dict[str, dict[str, int]] = {table.table: {} for table in move.moved_tables}
    reasons: dict[str, dict[str, dict[str, Any]]] = {}
    # One hash aggregate: the counts, and the ids only of the rows listed with a reason, sorted
    # here (an ordered aggregate would sort every row, the moved ones included).
    for source_table, outcome, reason, rows, ids in target.execute(
        "SELECT source_table, outcome, reason, count(*), "
        "array_agg(source_id) FILTER (WHERE reason IS NOT NULL) "
        "FROM split_outcomes GROUP BY 1, 2, 3"
    ).fetchall():
        if source_table not in by_table:
            raise SplitError(
                f"{move.name}: {move.transform_file.name} classified rows of {source_table}, "
                "which the move does not move"
            )
        by_table[source_table][outcome] = by_table[source_table].get(outcome, 0) + rows
        if reason is None:
            continue
        entry = reasons.setdefault(outcome, {}).setdefault(reason, {"count": 0, "rows": {}})
        entry["count"] += rows
        entry["rows"][source_table] = sorted(ids)
    if ids_staged:
        check_one_outcome_each(target, move)
    for table in move.moved_tables:
        classified = sum(by_table[table.table].values())
        if classified != staged[str(table)]:
            raise SplitError(
                f"{move.name}: {staged[str(table)]:,} rows of {table} were copied but "
                f"{classified:,} got an outcome: {move.transform_file.name} leaves rows out"
            )
    planned = {row[0]: int(row[1]) for row in target.execute("SELECT * FROM split_planned")}
    return Outcome(staged=staged, by_table=by_table, reasons=reasons, planned=planned)


# The ids of one side as a multiset: rows, and the sum and xor of a 64-bit hash of each id.
_ID_SET = "count(*), coalesce(sum(hashint8extended({id}, 0)), 0), " + (
    "coalesce(bit_xor(hashint8extended({id}, 0)), 0)"
)
SHOWN_IDS = 10


def check_one_outcome_each(target: psycopg.Connection[Any], move: Move) -> None:
    """Refuse the move unless the outcomes name exactly the staged rows, each once. The two
    sides are compared as multisets of ids by their count and the sum and xor of a 64-bit hash
    of each id (one pass over each side; grouping 100,000 ids to look for a second outcome
    cost as much as the rest of the accounting); when they differ, the rows are looked up
    exactly and named."""
    outcomes = {
        source_table: tuple(found)
        for source_table, *found in target.execute(
            "SELECT source_table, " + _ID_SET.format(id="source_id") + " FROM split_outcomes "
            "GROUP BY 1"
        )
    }
    for table in move.moved_tables:
        stage = sql.Identifier(table.stage)
        staged = tuple(
            one_row(
                target,
                sql.SQL("SELECT " + _ID_SET.format(id="id") + " FROM {}").format(stage),
            )
        )
        if outcomes.get(table.table, (0, 0, 0)) == staged:
            continue
        found = []
        for what, query in (
            (
                "rows with more than one outcome",
                "SELECT source_id FROM split_outcomes WHERE source_table = %(table)s "
                "GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT %(shown)s",
            ),
            (
                "rows without an outcome",
                "SELECT staged.id FROM {stage} AS staged WHERE NOT EXISTS ("
                "SELECT FROM split_outcomes AS o "
                "WHERE o.source_table = %(table)s AND o.source_id = staged.id) "
                "ORDER BY 1 LIMIT %(shown)s",
            ),
            (
                "outcomes of rows never copied",
                "SELECT o.source_id FROM split_outcomes AS o WHERE o.source_table = %(table)s "
                "AND NOT EXISTS (SELECT FROM {stage} AS staged WHERE staged.id = o.source_id) "
                "ORDER BY 1 LIMIT %(shown)s",
            ),
        ):
            ids = [
                str(row[0])
                for row in target.execute(
                    sql.SQL(query).format(stage=stage),
                    {"table": table.table, "shown": SHOWN_IDS},
                )
            ]
            if ids:
                found.append(f"{what}: id {', '.join(ids)}")
        raise SplitError(
            f"{move.name}: {move.transform_file.name} does not give every copied row of {table} "
            f"exactly one outcome: {'; '.join(found) or 'the ids differ'}"
        )


def check_inserted(target: psycopg.Connection[Any], move: Move, outcome: Outcome) -> dict[str, int]:
    """Refuse the move unless every planned row was wanted and inserted: a row the target
    already held under another unique key would otherwise be lost silently."""
    results = {
        table: (int(wanted), int(inserted))
        for table, wanted, inserted in target.execute(
            "SELECT target_table, wanted, inserted FROM split_inserted"
        )
    }
    for table in move.target_tables:
        planned = outcome.planned.get(table)
        wanted, inserted = results.get(table, (None, None))
        if planned is None or wanted is None:
            raise SplitError(f"{move.name}: {move.transform_file.name} does not fill {table}")
        if planned != wanted or wanted != inserted:
            raise SplitError(
                f"{move.name}: {table}: {planned:,} rows planned, {wanted:,} wanted, "
                f"{inserted:,} inserted; the difference conflicts with rows the target already "
                "holds (a unique key). Nothing of the move was committed."
            )
    return {table: results[table][1] for table in move.target_tables}


# -- plan ----------------------------------------------------------------------------------------
def plan_move(topology: Topology, move: Move) -> MovePlan:
    with session(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
        target_rows = {table: count_rows(target, table) for table in move.target_tables}
        result = MovePlan(move=move, ledger=ledger, target_rows=target_rows)
        if ledger is not None and ledger.done:
            return result
        result.missing_sources = missing_sources(topology, move)
        if result.missing_sources:
            return result
        for service in move.source_services:
            with session(topology, service) as source:
                for table in move.sources_in(service):
                    result.source_rows[str(table)] = count_rows(source, f"legacy.{table.table}")
        with target.transaction(force_rollback=True):
            target.execute(
                sql.SQL("SET LOCAL ROLE {}").format(
                    sql.Identifier(service_spec(move.target).owner_role)
                )
            )
            staged = stage_sources(topology, move, target, _quiet)
            classify(target, move, read_only=True)
            result.outcome = read_outcome(target, move, staged)
    return result


# -- run -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deferred:
    """An index (or the unique constraint it backs) or a foreign key dropped for a bulk load,
    and the statement that creates it again, as it was."""

    table: str
    name: str
    create: str


def defer_for_bulk_load(target: psycopg.Connection[Any], move: Move) -> list[Deferred]:
    """Drop the indexes and the foreign keys of the move's EMPTY target tables, to build each
    index once after the insert and check each foreign key with one join (a bulk load: several
    times cheaper than maintaining an index, or firing a check, row by row). The foreign keys
    go first, so that a primary key only they refer to can go too. Kept: indexes a foreign key
    of another table uses, indexes with a comment, and partial or expression indexes whose
    printed definition does not make the same index again (see :func:`_recreates_itself`).
    Returned in the order to create them again: indexes, then the foreign keys that need them.
    Inside the move's transaction, which holds the tables (ACCESS EXCLUSIVE) until it commits;
    a failure rolls the drops back with everything else."""
    empty = []
    for table in move.target_tables:
        name = sql.Identifier(*table.split("."))
        if not scalar(target, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(name)):
            target.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(name))
            empty.append((table, name))
    foreign_keys: list[Deferred] = []
    for table, name in empty:
        for foreign_key, create in target.execute(
            """
            SELECT conname, format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', conrelid::regclass,
                                   conname, pg_get_constraintdef(oid))
            FROM pg_constraint
            WHERE conrelid = %s::regclass AND contype = 'f'
            ORDER BY 1
            """,
            (table,),
        ).fetchall():
            target.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    name, sql.Identifier(foreign_key)
                )
            )
            foreign_keys.append(Deferred(table, foreign_key, create))
    indexes: list[Deferred] = []
    for table, name in empty:
        for index, constraint, create, derived in target.execute(
            """
            SELECT i.indexrelid::regclass::text, c.conname,
                   CASE WHEN c.oid IS NOT NULL
                        THEN format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', i.indrelid::regclass,
                                    c.conname, pg_get_constraintdef(c.oid))
                        ELSE pg_get_indexdef(i.indexrelid) END,
                   i.indpred IS NOT NULL OR i.indexprs IS NOT NULL
            FROM pg_index AS i
            LEFT JOIN pg_constraint AS c
                   ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                  AND c.contype IN ('p', 'u', 'x')
            WHERE i.indrelid = %s::regclass
              AND NOT EXISTS (
                  SELECT FROM pg_constraint AS fk
                  WHERE fk.contype = 'f' AND fk.conindid = i.indexrelid
              )
              AND NOT EXISTS (SELECT FROM pg_description AS d WHERE d.objoid = i.indexrelid)
            -- The primary key first: the table's other indexes are built after it.
            ORDER BY i.indisprimary DESC, 1
            """,
            (table,),
        ).fetchall():
            if derived and not _recreates_itself(target, index, create):
                continue
            if constraint is not None:
                target.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        name, sql.Identifier(constraint)
                    )
                )
            else:
                target.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(index)))
            indexes.append(Deferred(table, constraint or index, create))
    return indexes + foreign_keys


# An index's predicate and expressions as PostgreSQL stores them, without the positions in the
# statement that created them: equal exactly when the trees are the same, down to how each cast
# was written.
_INDEX_TREE = """
    SELECT regexp_replace(concat(indpred::text, '|', indexprs::text), ':location -?[0-9]+', '',
                          'g')
    FROM pg_index WHERE indexrelid = %s::regclass
"""


def _recreates_itself(target: psycopg.Connection[Any], index: str, create: str) -> bool:
    """Whether the printed definition of a partial or expression index makes the same index
    again: tried on the empty table under a name no other relation has (the index's own plus
    its oid) and rolled back. A predicate comes back as PostgreSQL prints it, which can differ
    from what the migration wrote (an ``IN`` list comes back as ``= ANY (ARRAY[...])`` with its
    casts written out), and the planner's proofs with it: such an index, or one whose trial
    fails, is kept and maintained row by row instead."""
    name, schema, oid = one_row(
        target,
        "SELECT quote_ident(c.relname), quote_ident(n.nspname), c.oid::int8 FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
        (index,),
    )
    trial_name = f"split_trial_{oid}"
    trial = re.sub(
        rf"^(CREATE (?:UNIQUE )?INDEX ){re.escape(name)} ON ", rf"\g<1>{trial_name} ON ", create
    )
    if trial == create:
        return False
    try:
        with target.transaction(force_rollback=True):
            target.execute(trial)
            made = f"{schema}.{trial_name}"
            same_tree = scalar(target, f"SELECT ({_INDEX_TREE}) = ({_INDEX_TREE})", (index, made))
            printed = scalar(target, "SELECT pg_get_indexdef(%s::regclass)", (made,))
    except psycopg.Error:
        return False
    return bool(same_tree) and printed == trial


def create_deferred(target: psycopg.Connection[Any], deferred: list[Deferred]) -> None:
    """Create the deferred indexes and foreign keys again: a duplicate under a unique index, or
    a row whose foreign key points nowhere, fails the move."""
    for found in deferred:
        target.execute(found.create)


def apply_move(target: psycopg.Connection[Any], move: Move, *, bulk_load: bool) -> None:
    """Write the target: the move's apply part; with ``bulk_load``, the secondary indexes and
    foreign keys of the target tables that are empty are created once afterwards. The inserts
    have no ON CONFLICT (it would cost as much again as the insert): a row the target holds
    under a unique key the classification does not look at fails here, and the move is refused
    naming it."""
    deferred = defer_for_bulk_load(target, move) if bulk_load else []
    try:
        # A savepoint: after a unique violation the target is read as it was before the apply,
        # to tell whose row the key is.
        with target.transaction():
            execute_sql(target, transform_parts(move.transform_file).apply)
    except psycopg.errors.UniqueViolation as exc:
        raise SplitError(_unique_conflict(target, move, exc)) from exc
    try:
        create_deferred(target, deferred)
    except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation) as exc:
        raise SplitError(
            f"{move.name}: the moved rows break {exc.diag.constraint_name} "
            f"({exc.diag.message_detail}): {move.transform_file.name} lets them through. "
            "Nothing of the move was committed."
        ) from exc


def _unique_conflict(
    target: psycopg.Connection[Any], move: Move, exc: psycopg.errors.UniqueViolation
) -> str:
    """The refusal of a unique violation in the apply, naming whose the other row is: the
    target's (there before the move) or the move's own (two source rows the transform makes
    one key of)."""
    key = f"the unique key {exc.diag.constraint_name} ({exc.diag.message_detail})"
    held = _target_holds_key(target, exc)
    if held:
        table = f"{exc.diag.schema_name}.{exc.diag.table_name}"
        return (
            f"{move.name}: a row to insert conflicts with a row the target already holds under "
            f"{key}, {table} id {', '.join(held)}: resolve it in the target (or skip the "
            "source row) and run again. Nothing of the move was committed."
        )
    if held is None:
        return (
            f"{move.name}: rows to insert conflict under {key}, with a row the target held or "
            f"with another row of the move (could not tell which). Nothing of the move was "
            "committed."
        )
    return (
        f"{move.name}: two of the rows this move inserts have the same {key}; the target holds "
        f"no such row: their source rows share the key and {move.transform_file.name} lets both "
        "through. Correct the source rows in the monolith (or the move's file) and run again. "
        "Nothing of the move was committed."
    )


def _target_holds_key(
    target: psycopg.Connection[Any], exc: psycopg.errors.UniqueViolation
) -> list[str] | None:
    """The ids of the target's rows (as before the apply) under the violated key, as
    PostgreSQL's detail names it ("Key (a, b)=(1, x) already exists."): none, the other row is
    the move's own; None when the detail cannot be matched with the index (no detail, an
    unexpected form)."""
    diag = exc.diag
    if not (diag.schema_name and diag.table_name and diag.constraint_name and diag.message_detail):
        return None
    found = target.execute(
        "SELECT array(SELECT pg_get_indexdef(i.indexrelid, k, true) "
        "             FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k), "
        "       pg_get_expr(i.indpred, i.indrelid, true) "
        "FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (diag.schema_name, diag.constraint_name),
    ).fetchone()
    if found is None:
        return None
    columns, predicate = found
    prefix, suffix = f"Key ({', '.join(columns)})=(", ") already exists."
    detail = diag.message_detail
    if not (detail.startswith(prefix) and detail.endswith(suffix)):
        return None
    values = detail[len(prefix) : -len(suffix)]
    # Each key column as PostgreSQL prints it in the detail (its text, "null" for none).
    printed = sql.SQL(", ").join(
        sql.SQL("coalesce(({})::text, 'null')").format(sql.SQL(column)) for column in columns
    )
    where = sql.SQL(" AND ({})").format(sql.SQL(predicate)) if predicate else sql.SQL("")
    query = sql.SQL(
        "SELECT coalesce(to_jsonb(t)->>'id', '?') FROM {} AS t "
        "WHERE concat_ws(', ', {}) = %s{} LIMIT 3"
    ).format(sql.Identifier(diag.schema_name, diag.table_name), printed, where)
    return [row[0] for row in target.execute(query, (values,))]


def target_checksums(target: psycopg.Connection[Any], move: Move) -> dict[str, SideChecksum]:
    """The checksum of each check view of the target (with its smallest and largest bucket)."""
    run_file(target, move.checksum_file("target"))
    return {check.name: checksum([target], check.view) for check in move.checks}


def recorded_checksums(move: Move, taken: dict[str, SideChecksum]) -> dict[str, dict[str, Any]]:
    """The target's checksums as the ledger records them."""
    return {
        check.name: {
            "target_table": check.target_table,
            **taken[check.name][0].as_dict(),
            "definition": check.definition,
        }
        for check in move.checks
    }


def checksum_line(checksums: dict[str, dict[str, Any]]) -> str:
    """The ledger's one-line ``checksum``: each target table's rows, xor and sum."""
    return "; ".join(
        f"{entry['target_table']}: {entry['rows']} rows, xor {entry['xor']}, sum {entry['sum']}"
        for entry in checksums.values()
    )


def ledger_record(
    target: psycopg.Connection[Any],
    outcome: Outcome,
    inserted: dict[str, int],
    checksums: dict[str, dict[str, Any]],
) -> tuple[Any, ...]:
    """The ledger's source_rows, moved_rows, collapsed_rows, skipped_rows, reasons, inserted,
    checksum, checksums and inserted_ids of a move, in that order."""
    return (
        outcome.source_rows,
        outcome.total("moved"),
        outcome.total("collapsed"),
        outcome.total("skipped"),
        as_json(outcome.reasons),
        as_json(inserted),
        checksum_line(checksums),
        as_json(checksums),
        as_json(inserted_ids(target)),
    )


def inserted_ids(target: psycopg.Connection[Any]) -> dict[str, str]:
    return {
        table: ids or "{}"
        for table, ids in target.execute("SELECT target_table, ids::text FROM split_inserted")
    }


def _pending(topology: Topology, move: Move, say: Say) -> LedgerEntry | None:
    """The ledger of a move that is done (nothing to do), else None; refuses a move whose
    sources are missing."""
    with session(topology, move.target) as target:
        ensure_ledger(target, move.target)
        ledger = read_ledger(target, move.name)
    if ledger is not None and ledger.done:
        say(f"{move.name}: already done ({ledger.state()}); nothing to do")
        return ledger
    if ledger is not None and ledger.sync_started_at is not None:
        raise SplitError(
            f"{move.name}: being synced online: `rose split cutover --move {move.name}` "
            "finishes it (or `rose split abort` gives it up)"
        )
    missing = missing_sources(topology, move)
    if missing:
        raise SplitError(
            f"{move.name}: no source table {', '.join(missing)} "
            "(`rose split seed-legacy` makes a practice monolith)"
        )
    return None


class MoveNotVerified(SplitError):
    """The target, as the move's transaction was about to commit it, does not match the
    sources: the transaction is rolled back."""

    def __init__(self, verification: MoveVerification) -> None:
        self.verification = verification
        super().__init__(
            f"{verification.move.name}: its target does not match its sources ("
            + "; ".join(verification.differences())
            + "), so the move was not committed"
        )


def _move_transaction(
    topology: Topology,
    move: Move,
    say: Say,
    fault: FaultHook,
    verify: bool,
    bulk_load_min_rows: int,
) -> MoveReport:
    """The move's one transaction in its target (its sources are frozen already). With
    ``verify``, the check `rose split verify` makes, sources against target, runs in it before
    the commit and is recorded with it: a move whose target does not match its sources, or
    whose verification cannot run, is not committed."""
    owner = service_spec(move.target).owner_role
    with session(topology, move.target) as target:
        started = time.perf_counter()
        with target.transaction():
            target.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            # A concurrent run waits here, then finds the move done.
            ledger = read_ledger(target, move.name, lock=True)
            if ledger is not None and ledger.done:
                say(f"{move.name}: done meanwhile by another run; nothing to do")
                return MoveReport(move=move, done_before=ledger)
            staged = stage_sources(topology, move, target, say)
            fault(move.name, "after-copy")
            classify(target, move, read_only=False)
            outcome = read_outcome(target, move, staged)
            bulk_load = sum(outcome.planned.values()) >= bulk_load_min_rows
            apply_move(target, move, bulk_load=bulk_load)
            inserted = check_inserted(target, move, outcome)
            fault(move.name, "after-transform")
            say(
                f"{move.name}: {outcome.source_rows:,} source rows: "
                f"{outcome.total('moved'):,} moved, {outcome.total('collapsed'):,} collapsed, "
                f"{outcome.total('skipped'):,} skipped; inserted "
                + ", ".join(f"{rows:,} into {table}" for table, rows in inserted.items())
            )
            taken = target_checksums(target, move)
            seconds = time.perf_counter() - started
            target.execute(
                """
                UPDATE split.ledger
                SET finished_at = clock_timestamp(), seconds = %s, source_rows = %s,
                    moved_rows = %s, collapsed_rows = %s, skipped_rows = %s, reasons = %s,
                    inserted = %s, checksum = %s, checksums = %s, inserted_ids = %s,
                    verified_at = NULL, verification = NULL, verified_by = NULL,
                    aborted_at = NULL, aborted_by = NULL
                WHERE move = %s
                """,
                (
                    round(seconds, 3),
                    *ledger_record(target, outcome, inserted, recorded_checksums(move, taken)),
                    move.name,
                ),
            )
            verification = None
            if verify:
                fault(move.name, "before-verify")
                # The ledger as this transaction has just written it; the target's checksums
                # as it is about to commit them (the tables are this transaction's alone).
                recorded = read_ledger(target, move.name)
                if recorded is None:
                    raise SplitError(f"{move.name}: the ledger lost its row in the move")
                verification = compare_with_sources(topology, move, target, recorded, taken)
                say(f"{move.name}: verified: " + ("ok" if verification.ok else "DIFFERENT"))
                if not verification.ok:
                    raise MoveNotVerified(verification)
                record_verification(target, verification)
            fault(move.name, "before-commit")
        report = MoveReport(
            move=move, outcome=outcome, inserted=inserted, verification=verification
        )
        report.seconds = time.perf_counter() - started
        say(
            f"{move.name}: committed in {report.seconds:.2f} s "
            f"({report.rows_per_second:,.0f} rows/s)"
        )
        return report


def _estimated_rows(topology: Topology, moves: list[Move]) -> dict[str, float]:
    """The planner's row estimates of each move's moved source tables (no scan)."""
    sizes = dict.fromkeys((move.name for move in moves), 0.0)
    for service in dict.fromkeys(s for move in moves for s in move.source_services):
        with session(topology, service) as source:
            for move in moves:
                for table in move.sources_in(service):
                    if table.moved:
                        sizes[move.name] += scalar(
                            source,
                            "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = %s::regclass",
                            (f"legacy.{table.table}",),
                        )
    return sizes


@dataclass
class RunResult:
    reports: list[MoveReport] = field(default_factory=list)
    # Moves that failed, with the error; the others committed (or were done before).
    failed: dict[str, Exception] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """Whether every move of the run was verified before its commit, and matched."""
        return all(
            report.verification is not None and report.verification.ok for report in self.reports
        )


def run_moves(
    topology: Topology,
    moves: list[Move],
    say: Say,
    fault: FaultHook = crash_from_environment,
    jobs: int = DEFAULT_JOBS,
    verify: bool = True,
) -> list[MoveReport]:
    """Run ``moves`` (see :func:`run_all`); raise the first failure."""
    result = run_all(topology, moves, say, fault, jobs=jobs, verify=verify)
    for error in result.failed.values():
        raise error
    return result.reports


def run_all(
    topology: Topology,
    moves: list[Move],
    say: Say,
    fault: FaultHook = crash_from_environment,
    *,
    jobs: int = DEFAULT_JOBS,
    lock_timeout: float = FREEZE_LOCK_TIMEOUT,
    verify: bool = True,
    bulk_load_min_rows: int = BULK_LOAD_MIN_ROWS,
) -> RunResult:
    """Freeze the sources of every move not done yet (one transaction per source database),
    then run their transactions, ``jobs`` at a time: the moves are independent (each reads
    frozen sources and writes its own target tables). With ``verify``, each move is verified
    (sources against target, recorded in the ledger) in its transaction, before it commits. A
    move that inserts ``bulk_load_min_rows`` rows or more bulk-loads its empty targets (see
    :func:`defer_for_bulk_load`)."""
    with reused_sessions():
        return _run_all(topology, moves, say, fault, jobs, lock_timeout, verify, bulk_load_min_rows)


# What run says when a target's service is running (docs/runbook-split.md).
RUN_ADVICE = (
    'Stop the services first (docs/runbook-split.md, "Before the night", step 2): a running '
    "service writes its tables during and after the move (orders' reconciliation expires the "
    "moved orders past their time to pay), and verify, finalize and abort then find the target "
    "changed. Nothing was frozen or written."
)


def _not_done(topology: Topology, moves: list[Move]) -> list[Move]:
    """The moves a run would run (its ledger read only: no ledger is made here)."""
    return [move for move in moves if not ((entry := ledger_of(topology, move)) and entry.done)]


def _run_all(
    topology: Topology,
    moves: list[Move],
    say: Say,
    fault: FaultHook,
    jobs: int,
    lock_timeout: float,
    verify: bool,
    bulk_load_min_rows: int,
) -> RunResult:
    result = RunResult()
    reports: dict[str, MoveReport] = {}
    pending: list[Move] = []
    refuse_while_services_run(topology, _not_done(topology, moves), "rose split run", RUN_ADVICE)
    open_sessions(topology, databases_of(moves))
    for move in moves:
        done = _pending(topology, move, say)
        if done is not None:
            reports[move.name] = MoveReport(move=move, done_before=done)
        else:
            pending.append(move)
    if pending:
        for move in pending:
            with session(topology, move.target) as target:
                mark_started(target, move.name)
        freeze(topology, pending, say, lock_timeout)
        for move in pending:
            fault(move.name, "after-freeze")
        # The biggest first, so that the small ones fill in around them rather than after.
        sizes = _estimated_rows(topology, pending)
        largest_first = sorted(pending, key=lambda move: -sizes[move.name])
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {
                submit_in_context(
                    pool,
                    _move_transaction,
                    topology,
                    move,
                    say,
                    fault,
                    verify,
                    bulk_load_min_rows,
                ): move
                for move in largest_first
            }
            for future in as_completed(futures):
                move = futures[future]
                try:
                    reports[move.name] = future.result()
                except (SplitError, psycopg.Error) as exc:
                    result.failed[move.name] = exc
    result.reports = [reports[move.name] for move in moves if move.name in reports]
    return result
