"""``rose split finalize``: drop the legacy tables the moves moved, without ever losing a row.

In order, and refusing at the first thing that is not right:
1. Reconcile an earlier finalize that did not confirm (killed): the records in the source
   databases (``split.dropped``, written in the same transaction as each DROP) say what was
   dropped; moves whose tables are all dropped are confirmed, an intent that dropped nothing is
   cleared.
2. Every move must be moved and verified (the DBA read verify's report), and is verified AGAIN
   here, under the freeze, with the targets locked against writes (SHARE) until the end: sources
   against targets, or, for a move whose sources an interrupted finalize dropped in part, the
   target against the checksums recorded when the move committed.
3. A ``pg_dump -Fc`` backup of the tables to drop, per source database, from a snapshot in
   which their checksums are taken; each file's path, size and sha256 are printed.
4. Per source database, one transaction takes ACCESS EXCLUSIVE locks on the tables to drop
   (``lock_timeout``, bounded retries, naming the holders when it gives up), checks that the
   rows under the lock are those of the backup, records the intent in the target ledgers,
   DROPs and writes ``split.dropped``. The transactions of all databases are prepared this far
   before the first one commits, so a lock that cannot be had drops nothing anywhere.
5. The commits, then the confirmation in the target ledgers.
A killed finalize takes its server-side work with it: every step is in a transaction on a
connection whose server checks the client every second (``client_connection_check_interval``)
and ends a transaction left idle (``idle_in_transaction_session_timeout``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from apps.registry import service_spec
from ops.db.binaries import client_tool_target, pg_binary, tables_without_data
from ops.db.checksums import Checksum, table_checksum
from ops.db.connections import scalar
from ops.db.topology import Topology
from ops.paths import private_directory, private_file, sha256_of
from ops.split.common import (
    FaultHook,
    LedgerEntry,
    Say,
    SplitError,
    as_json,
    connect,
    crash_from_environment,
    dropped_records,
    ensure_dropped_record,
    execute_sql,
    operator,
    read_ledger,
    table_exists,
)
from ops.split.freeze import describe_frozen, frozen_in, unfreeze
from ops.split.moves import (
    LEGACY_SERVICES,
    LEGACY_TABLES,
    MOVES,
    SPLIT_DIR,
    Move,
    tables_dropped_in,
)
from ops.split.sync import stop_sync
from ops.split.verify import MoveVerification, verify_against_commit, verify_moves

# A client that hangs (rather than dies) with locks held is cut off after this long idle.
DROP_IDLE_TIMEOUT = "60s"
TARGET_IDLE_TIMEOUT = "10min"


@dataclass(frozen=True)
class FinalizeOptions:
    backup_dir: Path
    # Seconds one attempt waits for a lock, and attempts before giving up.
    lock_timeout: float = 5.0
    lock_attempts: int = 3


@dataclass
class Backup:
    service: str
    file: Path
    size: int
    sha256: str
    # table -> rows and checksum in the backup's snapshot
    tables: dict[str, Checksum]

    @property
    def database(self) -> str:
        return service_spec(self.service).database

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "bytes": self.size,
            "sha256": self.sha256,
            "tables": {table: found.as_dict() for table, found in self.tables.items()},
        }


@dataclass
class FinalizeResult:
    refused: list[str] = field(default_factory=list)
    already_finalized: bool = False
    backups: list[Backup] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)
    finalized: list[str] = field(default_factory=list)


class LockNotAvailable(SplitError):
    """Finalize gave up waiting for a lock; nothing was dropped."""


# -- reconciling an interrupted finalize ---------------------------------------------------------
def owned_tables(move: Move) -> list[tuple[str, str]]:
    """(service, table) of every legacy table the move moves (finalize drops them)."""
    return [
        (declared.service, declared.table)
        for declared in LEGACY_TABLES
        if declared.moved_by == move.name
    ]


def source_records(topology: Topology) -> dict[str, dict[str, dict[str, Any]]]:
    """split.dropped of every source database: {service: {table: record}}."""
    records = {}
    for service in LEGACY_SERVICES:
        with connect(topology, service) as connection:
            records[service] = dropped_records(connection)
    return records


def dropped_of(move: Move, records: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        records[service][table]
        for service, table in owned_tables(move)
        if table in records.get(service, {})
    ]


def reconcile(topology: Topology, say: Say) -> None:
    """Settle the ledgers of a finalize that did not confirm, from the source records."""
    records = source_records(topology)
    for move in MOVES:
        with connect(topology, move.target) as target:
            ledger = read_ledger(target, move.name)
            if ledger is None or ledger.finalized_at is not None:
                continue
            dropped = dropped_of(move, records)
            if dropped and len(dropped) == len(owned_tables(move)):
                last = max(dropped, key=lambda record: record["dropped_at"])
                target.execute(
                    "UPDATE split.ledger SET finalized_at = %s, finalized_by = %s, "
                    "finalizing_at = coalesce(finalizing_at, %s) WHERE move = %s",
                    (last["dropped_at"], last["dropped_by"], last["dropped_at"], move.name),
                )
                say(
                    f"{move.name}: an earlier finalize dropped its sources and did not confirm; "
                    "confirmed from the records in the source databases"
                )
            elif ledger.finalizing and not dropped:
                target.execute(
                    "UPDATE split.ledger SET finalizing_at = NULL, backups = NULL WHERE move = %s",
                    (move.name,),
                )
                say(f"{move.name}: an earlier finalize stopped before dropping anything")


# -- locks ---------------------------------------------------------------------------------------
def _holders(connection: psycopg.Connection[Any], tables: list[str]) -> str:
    rows = connection.execute(
        """
        SELECT DISTINCT c.relname, l.pid, l.mode, coalesce(a.application_name, ''),
               coalesce(a.state, ''), a.xact_start
        FROM pg_locks AS l
        JOIN pg_class AS c ON c.oid = l.relation
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE l.granted AND l.pid <> pg_backend_pid()
          AND n.nspname = split_part(%(first)s, '.', 1)
          AND c.relname = ANY(%(names)s)
        ORDER BY 2, 1
        """,
        {"first": tables[0], "names": [table.split(".", 1)[1] for table in tables]},
    ).fetchall()
    if not rows:
        return "the sessions that held them have ended since"
    return "; ".join(
        f"{table} held by pid {pid} ({application or 'no application name'}, {state}"
        + (f", in a transaction since {started:%H:%M:%S}" if started else "")
        + f", {mode})"
        for table, pid, mode, application, state, started in rows
    )


def lock_tables(
    connection: psycopg.Connection[Any],
    tables: list[str],
    mode: str,
    options: FinalizeOptions,
    where: str,
    say: Say,
) -> None:
    """LOCK ``tables`` (schema-qualified) in ``mode`` inside the connection's transaction,
    each attempt waiting at most ``lock_timeout``; raise LockNotAvailable naming the holders."""
    statement = sql.SQL("LOCK TABLE {} IN {} MODE").format(
        sql.SQL(", ").join(sql.Identifier(*table.split(".")) for table in tables), sql.SQL(mode)
    )
    timeout = f"{int(options.lock_timeout * 1000)}ms"
    for attempt in range(1, options.lock_attempts + 1):
        try:
            with connection.transaction():  # a savepoint: a timeout leaves the rest intact
                connection.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
                connection.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            holders = _holders(connection, tables)
            if attempt == options.lock_attempts:
                raise LockNotAvailable(
                    f"could not lock {where} {', '.join(tables)} ({mode}) in "
                    f"{options.lock_attempts} attempts of {options.lock_timeout:g} s: {holders}"
                ) from None
            say(f"waiting for {where} {', '.join(tables)}: {holders}; attempt {attempt + 1}")
            time.sleep(min(2.0, options.lock_timeout))


def _transaction_settings(connection: psycopg.Connection[Any], idle: str) -> None:
    connection.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, true)", (idle,)
    )


@contextmanager
def _open_transaction(
    stack: ExitStack, topology: Topology, service: str, idle: str
) -> Iterator[psycopg.Connection[Any]]:
    connection = stack.enter_context(connect(topology, service))
    # Whatever happens (a refusal, an error), a transaction still open is rolled back, never
    # committed by the connection's exit.
    stack.callback(_rollback_if_open, connection)
    connection.execute("BEGIN")
    _transaction_settings(connection, idle)
    yield connection


def _rollback_if_open(connection: psycopg.Connection[Any]) -> None:
    if not connection.closed and connection.info.transaction_status != TransactionStatus.IDLE:
        connection.execute("ROLLBACK")


# -- backups -------------------------------------------------------------------------------------
def _legacy_tables(connection: psycopg.Connection[Any]) -> list[str]:
    return [
        row[0]
        for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy' ORDER BY 1"
        )
    ]


def _kept_relations(connection: psycopg.Connection[Any], dropped: list[str]) -> list[str]:
    """The tables of schema legacy that stay, and every sequence not owned by a dropped table
    (pg_dump --exclude-table leaves an excluded table's sequence in the archive)."""
    return [
        row[0]
        for row in connection.execute(
            """
            SELECT c.relname
            FROM pg_class AS c
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            LEFT JOIN pg_depend AS owned
                   ON owned.classid = 'pg_class'::regclass AND owned.objid = c.oid
                  AND owned.refclassid = 'pg_class'::regclass AND owned.deptype IN ('a', 'i')
            LEFT JOIN pg_class AS owner ON owner.oid = owned.refobjid
            WHERE n.nspname = 'legacy' AND c.relkind IN ('r', 'p', 'S')
              AND coalesce(owner.relname, c.relname) <> ALL(%s)
            ORDER BY 1
            """,
            (dropped,),
        )
    ]


def _new_backup_directory(root: Path) -> Path:
    """A directory of its own for this finalize's backups (never an earlier one's files), open
    to its owner only: the archives hold merchants' SumUp keys and buyers' rows."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        for attempt in range(100):
            directory = root / (stamp if attempt == 0 else f"{stamp}-{attempt + 1}")
            try:
                directory.mkdir(parents=True, mode=0o700)
            except FileExistsError:
                continue
            return private_directory(directory)
    except OSError as exc:
        raise SplitError(
            f"cannot write {exc.filename or root}: {exc.strerror or exc}; nothing was dropped"
        ) from None
    raise SplitError(f"could not make a new backup directory under {root}")


def back_up(
    topology: Topology, service: str, tables: list[str], directory: Path, options: FinalizeOptions
) -> Backup:
    """``pg_dump -Fc`` of schema legacy of ``service``'s database without the tables that stay
    (so the archive holds the tables to drop, their triggers and the freeze function), from a
    snapshot exported by a transaction that also takes each table's checksum."""
    database = service_spec(service).database
    path = directory / f"{database}.legacy.dump"
    with connect(topology, service) as connection:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            snapshot = scalar(connection, "SELECT pg_export_snapshot()")
            checksums = {table: table_checksum(connection, f"legacy.{table}") for table in tables}
            excluded = [
                argument
                for relation in _kept_relations(connection, tables)
                for argument in ("--exclude-table", f"legacy.{relation}")
            ]
            dsn, environment = client_tool_target(topology.admin_url(service))
            dumped = subprocess.run(
                [
                    str(pg_binary("pg_dump")),
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--lock-wait-timeout={int(options.lock_timeout * 1000)}",
                    "--schema=legacy",
                    *excluded,
                    f"--file={private_file(path)}",
                    f"--dbname={dsn}",
                ],
                capture_output=True,
                text=True,
                timeout=3600,
                env=environment,
            )
        finally:
            connection.execute("ROLLBACK")
    if dumped.returncode != 0:
        raise SplitError(f"pg_dump of {database} failed: {dumped.stderr.strip()}")
    missing, unreadable = tables_without_data(path, [f"legacy.{table}" for table in tables])
    if missing or unreadable:
        named = ", ".join(name.split(".", 1)[1] for name in missing) or "?"
        raise SplitError(
            f"the backup {path} does not hold the data of {named} "
            f"({unreadable or 'pg_restore --list'})"
        )
    return Backup(service, path, path.stat().st_size, sha256_of(path), checksums)


# -- finalize ------------------------------------------------------------------------------------
def _refusals(ledgers: dict[str, LedgerEntry | None]) -> list[str]:
    refused = []
    for move in MOVES:
        ledger = ledgers[move.name]
        if ledger is None or not ledger.done:
            refused.append(f"{move.name}: not moved")
        elif ledger.finalized_at is None and not ledger.finalizing and ledger.verified_at is None:
            why = (
                "the last verify found differences"
                if ledger.verification is not None
                else "moved, not verified"
            )
            refused.append(f"{move.name}: {why}")
    return refused


def _not_frozen(topology: Topology, moves: list[Move]) -> list[str]:
    missing = []
    for service in LEGACY_SERVICES:
        with connect(topology, service) as connection:
            frozen = frozen_in(connection)
            for move in moves:
                for source in move.sources_in(service):
                    if table_exists(connection, f"legacy.{source.table}") and (
                        move.name not in frozen.get(source.table, [])
                    ):
                        missing.append(f"{source} is not frozen by {move.name}")
    return missing


def _reverify_all(
    topology: Topology,
    moves: list[Move],
    targets: dict[str, psycopg.Connection[Any]],
    ledgers: dict[str, LedgerEntry | None],
) -> list[MoveVerification]:
    """Sources against targets, the moves at the same time. A move whose sources an
    interrupted finalize dropped in part (after verifying them) is checked against its commit
    instead: its target must be exactly what the move committed."""
    whole: list[Move] = []
    partial: list[Move] = []
    for move in moves:
        present = True
        for service in move.source_services:
            with connect(topology, service) as source:
                present &= all(
                    table_exists(source, f"legacy.{table.table}")
                    for table in move.sources_in(service)
                )
        (whole if present else partial).append(move)
    results = {
        result.move.name: result for result in verify_moves(topology, whole, against_sources=True)
    }
    for move in partial:
        ledger = ledgers[move.name]
        assert ledger is not None
        results[move.name] = verify_against_commit(targets[move.name], move, ledger, strict=True)
    return [results[move.name] for move in moves]


def finalize(
    topology: Topology,
    options: FinalizeOptions,
    say: Say,
    fault: FaultHook = crash_from_environment,
) -> FinalizeResult:
    result = FinalizeResult()
    reconcile(topology, say)
    ledgers: dict[str, LedgerEntry | None] = {}
    for move in MOVES:
        with connect(topology, move.target) as target:
            ledgers[move.name] = read_ledger(target, move.name)
    result.refused = _refusals(ledgers)
    if result.refused:
        return result
    # Not refused: every move has its ledger entry.
    moved = {name: ledger for name, ledger in ledgers.items() if ledger is not None}
    pending = [move for move in MOVES if moved[move.name].finalized_at is None]
    moves_done = [move.name for move in MOVES]
    drops: dict[str, list[str]] = {}
    keeps: dict[str, list[str]] = {}
    for service in LEGACY_SERVICES:
        with connect(topology, service) as source:
            present = _legacy_tables(source)
            ensure_dropped_record(source, service)
        drops[service] = [t for t in tables_dropped_in(service, moves_done) if t in present]
        keeps[service] = [t for t in present if t not in drops[service]]
    result.kept = {service_spec(s).database: tables for s, tables in keeps.items()}
    if not pending:
        result.already_finalized = True
        _lift_kept_freezes(topology, keeps, say)
        return result
    result.refused = _not_frozen(topology, pending)
    if result.refused:
        return result
    # What an online sync left (a cutover that died before removing its capture).
    for move in MOVES:
        removed = stop_sync(topology, move)
        if removed:
            say(f"{move.name}: removed the change capture from {', '.join(removed)}")

    with ExitStack() as stack:
        # 2. Targets locked against writes until the end, then re-verified.
        targets: dict[str, psycopg.Connection[Any]] = {}
        for move in pending:
            with _open_transaction(stack, topology, move.target, TARGET_IDLE_TIMEOUT) as target:
                lock_tables(
                    target,
                    list(move.target_tables),
                    "SHARE",
                    options,
                    service_spec(move.target).database,
                    say,
                )
                targets[move.name] = target
        for move, verification in zip(
            pending, _reverify_all(topology, pending, targets, ledgers), strict=True
        ):
            if not verification.ok:
                result.refused += [
                    f"{move.name}: {difference}" for difference in verification.differences()
                ] or [f"{move.name}: the verification failed"]
            else:
                say(f"{move.name}: verified again under the freeze: sources and target match")
        if result.refused:
            return result

        # 3. Backups.
        directory = _new_backup_directory(options.backup_dir)
        for service, tables in drops.items():
            if not tables:
                continue
            backup = back_up(topology, service, tables, directory, options)
            result.backups.append(backup)
            say(
                f"backup {backup.file}: {backup.size:,} bytes, sha256 {backup.sha256} "
                f"({', '.join(f'legacy.{t} {c.rows:,} rows' for t, c in backup.tables.items())})"
            )
        fault("finalize", "after-backup")

        # 4. Every database's transaction up to the DROP, before any commits.
        backups = {backup.service: backup for backup in result.backups}
        by = operator()
        drop_sessions: list[tuple[str, psycopg.Connection[Any]]] = []
        try:
            for service, tables in drops.items():
                if not tables:
                    continue
                with _open_transaction(stack, topology, service, DROP_IDLE_TIMEOUT) as source:
                    database = service_spec(service).database
                    lock_tables(
                        source,
                        [f"legacy.{t}" for t in tables],
                        "ACCESS EXCLUSIVE",
                        options,
                        database,
                        say,
                    )
                    _check_unchanged(source, database, backups[service])
                    drop_sessions.append((service, source))
        except LockNotAvailable as exc:
            raise LockNotAvailable(
                f"{exc}. Nothing was dropped; "
                f"{describe_frozen(topology, LEGACY_SERVICES)}. Run finalize again once the "
                "sessions named are gone."
            ) from None
        fault("finalize", "after-lock")
        _record_intent(topology, pending, result.backups, say)
        for service, source in drop_sessions:
            spec = service_spec(service)
            tables = drops[service]
            manifest = [
                {
                    "source_table": table,
                    "move": _mover(service, table),
                    "dropped_by": by,
                    "rows": backups[service].tables[table].rows,
                    "checksum": str(backups[service].tables[table]),
                    "backup_file": str(backups[service].file),
                    "backup_sha256": backups[service].sha256,
                }
                for table in tables
            ]
            execute_sql(
                source,
                (SPLIT_DIR / "drop_sources.sql").read_text(),
                {
                    "owner": spec.owner_role,
                    "tables": ",".join(tables),
                    "manifest": as_json(manifest),
                },
            )
        fault("finalize", "after-drop")

        # 5. Commit each database, then confirm in the ledgers.
        for index, (service, source) in enumerate(drop_sessions):
            source.execute("COMMIT")
            database = service_spec(service).database
            result.dropped[database] = drops[service]
            for table in drops[service]:
                say(f"dropped {database} legacy.{table} (its rows are in the backup)")
            if index == 0:
                fault("finalize", "between-commits")
        for move in pending:
            target = targets[move.name]
            target.execute(
                "UPDATE split.ledger SET finalized_at = clock_timestamp(), finalized_by = %s, "
                "finalizing_at = coalesce(finalizing_at, clock_timestamp()) WHERE move = %s",
                (by, move.name),
            )
            target.execute("COMMIT")
            result.finalized.append(move.name)
    # Last: the tables the split keeps are the monolith's again (a finalize killed before this
    # lifts it on its next run).
    _lift_kept_freezes(topology, keeps, say)
    for service, tables in keeps.items():
        for table in tables:
            say(
                f"kept {service_spec(service).database} legacy.{table}: {_why_kept(service, table)}"
            )
    return result


def _check_unchanged(source: psycopg.Connection[Any], database: str, backup: Backup) -> None:
    """Under the lock: the rows about to be dropped are those the backup holds."""
    for table, backed_up in backup.tables.items():
        now = table_checksum(source, f"legacy.{table}")
        if now != backed_up:
            raise SplitError(
                f"{database} legacy.{table} changed since its backup ({backed_up} then, {now} "
                "now): were the sources unfrozen? Nothing was dropped."
            )


def _record_intent(
    topology: Topology, pending: list[Move], backups: list[Backup], say: Say
) -> None:
    manifest = as_json({backup.database: backup.as_json() for backup in backups})
    for move in pending:
        with connect(topology, move.target) as target:
            target.execute(
                "UPDATE split.ledger SET finalizing_at = coalesce(finalizing_at, "
                "clock_timestamp()), backups = coalesce(backups, '{}'::jsonb) || %s::jsonb "
                "WHERE move = %s",
                (manifest, move.name),
            )
    say("recorded in the ledgers: finalize is dropping the sources (backups listed)")


def _mover(service: str, table: str) -> str:
    for declared in LEGACY_TABLES:
        if (declared.service, declared.table) == (service, table) and declared.moved_by:
            return declared.moved_by
    raise SplitError(f"legacy.{table} is moved by no move")


def _why_kept(service: str, table: str) -> str:
    for declared in LEGACY_TABLES:
        if (declared.service, declared.table) == (service, table):
            return declared.kept or "kept"
    return "not in the split's classification (ops/split/moves.py): never dropped by it"


def _lift_kept_freezes(topology: Topology, keeps: dict[str, list[str]], say: Say) -> None:
    unfreeze(topology, [move.name for move in MOVES], keeps, say)
