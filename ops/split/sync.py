"""``rose split sync`` and ``rose split cutover``: the online split.

sync, per move:
1. install the capture (ops/split/capture.py): from its commit on, every change of a source
   table writes its group key into the move's change table, in the writer's transaction;
2. the snapshot: the move's transform over every source row, as ``run`` does it (one
   repeatable-read snapshot per source database, ONE transaction in the target), WITHOUT the
   freeze; it commits the target rows, the outcome of every source row with its group key
   (``split.sync_outcome``) and ``snapshot_at`` in the ledger. A change committed before the
   snapshot is in it (and may be captured too: applied again, harmlessly); one committed after
   it is in the change table;
3. rounds: read every change row there is; in ONE target transaction, stage the source rows of
   the changed keys as they are now, delete the target rows of those keys, run the move's
   transform for them, record their outcome and the position; commit; then delete the change
   rows applied. Applying a key re-derives it from the source, so a round that crashes after
   its commit and before that delete only applies the same keys again: nothing is lost (a
   change row is deleted only after the commit that applied it) and nothing doubles.

cutover, per move: apply the backlog, freeze its sources (``run``'s freeze), drain the changes
left, take a repeatable-read snapshot of the target, record the move done: the write pause
(from the freeze) ends there, and it does not grow with the data. Then, from that snapshot, the
ledger's record (the accounting from ``split.sync_outcome``, the target's checksums and ids),
and the verify of the frozen sources against the target as recorded (``verify``'s checks:
true whatever the service writes to the target meanwhile); then the capture goes.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.errors
from psycopg import IsolationLevel, sql

from apps.registry import service_spec
from ops.db.connections import scalar
from ops.db.topology import Topology
from ops.split.capture import CAPTURE_SCHEMA, SyncRules, capture_objects, install, remove, rules_of
from ops.split.checksum import checksum
from ops.split.common import (
    FaultHook,
    LedgerEntry,
    Say,
    SplitError,
    as_json,
    connect,
    crash_from_environment,
    ensure_ledger,
    ledger_of,
    mark_started,
    operator,
    read_ledger,
    refuse_while_services_run,
    run_file,
)
from ops.split.freeze import FREEZE_LOCK_TIMEOUT, freeze
from ops.split.moves import Move
from ops.split.run import (
    OUTCOME_FILE,
    apply_move,
    check_inserted,
    classify,
    copy_table,
    ledger_record,
    missing_sources,
    read_outcome,
    recorded_checksums,
    source_snapshot,
    stage_sources,
    target_checksums,
)
from ops.split.verify import (
    CheckResult,
    MoveVerification,
    accounting_problems,
    count_sources,
    record_verification,
    recorded_checksum,
    source_sessions,
)

# Points where a test (ROSE_SPLIT_CRASH=<move>:<point>) kills sync or cutover.
SYNC_CRASH_POINTS = (
    "after-capture",
    "snapshot-before-commit",
    "round-before-commit",
    "round-after-commit",
    "cutover-after-freeze",
    "cutover-after-record",
)


def _quiet(_: str) -> None:
    return None


@dataclass
class Change:
    id: int
    source_table: str
    key: str
    captured_at: datetime


@dataclass
class Lag:
    """What a move's sync has not applied yet."""

    pending: int
    seconds_behind: float

    def describe(self) -> str:
        return f"{self.pending:,} changes pending, {self.seconds_behind:.1f} s behind"


@dataclass
class RoundReport:
    move: str
    changes: int = 0
    keys: int = 0
    seconds: float = 0.0


@dataclass
class CutoverReport:
    move: Move
    write_pause: float = 0.0
    drained: int = 0
    verification: MoveVerification | None = None
    done_before: bool = False


# -- reading the change tables -------------------------------------------------------------------
def _change_table(move: Move) -> sql.Composable:
    return sql.Identifier(CAPTURE_SCHEMA, move.name)


def _captured_services(move: Move) -> list[str]:
    rules = rules_of(move)
    return [service for service in move.source_services if rules.captured_in(service)]


def pending_changes(topology: Topology, move: Move) -> dict[str, list[Change]]:
    """Every change row there is, per source service (all of them: the two keys of a row that an
    update moved to another group come from one transaction, and are applied together)."""
    changes: dict[str, list[Change]] = {}
    for service in _captured_services(move):
        with connect(topology, service) as source:
            changes[service] = [
                Change(int(row[0]), row[1], row[2], row[3])
                for row in source.execute(
                    sql.SQL(
                        "SELECT id, source_table, key::text, captured_at FROM {} ORDER BY id"
                    ).format(_change_table(move))
                )
            ]
    return changes


def lag(topology: Topology, move: Move) -> Lag:
    pending = 0
    oldest: float = 0.0
    for service in _captured_services(move):
        with connect(topology, service) as source:
            count, behind = source.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - "
                    "min(captured_at)), 0) FROM {}"
                ).format(_change_table(move))
            ).fetchone() or (0, 0)
            pending += int(count)
            oldest = max(oldest, float(behind))
    return Lag(pending=pending, seconds_behind=oldest)


def _keys_of_changes(
    topology: Topology, move: Move, changes: dict[str, list[Change]]
) -> dict[str, list[str]]:
    """The group keys to apply, per moved table (key space): captured keys of moved tables as
    they are, those of lookup tables expanded (in their source database) into the keys of the
    moved table they affect."""
    rules = rules_of(move)
    keys: dict[str, set[str]] = {}
    for service, rows in changes.items():
        lookups: dict[str, list[Any]] = {}
        for change in rows:
            captured = rules.of(change.source_table)
            if captured.expand is None:
                keys.setdefault(captured.key_space, set()).add(_canonical(change.key))
            else:
                lookups.setdefault(change.source_table, []).append(json.loads(change.key))
        for table, lookup_keys in lookups.items():
            captured = rules.of(table)
            if captured.keep_keys:
                keys.setdefault(table, set()).update(
                    _canonical(json.dumps(key)) for key in lookup_keys
                )
            with connect(topology, captured.expand_in or service) as source:
                for (key,) in source.execute(
                    captured.expand or "", {"keys": json.dumps(lookup_keys)}
                ):
                    keys.setdefault(captured.key_space, set()).add(_canonical(json.dumps(key)))
    return {space: sorted(found) for space, found in keys.items()}


def _canonical(key: str) -> str:
    return json.dumps(json.loads(key), separators=(",", ":"))


def _delete_applied(topology: Topology, move: Move, changes: dict[str, list[Change]]) -> None:
    for service, rows in changes.items():
        if not rows:
            continue
        with connect(topology, service) as source:
            source.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(_change_table(move)),
                ([change.id for change in rows],),
            )


# -- the target transaction ----------------------------------------------------------------------
def _stage_keys(
    topology: Topology,
    move: Move,
    rules: SyncRules,
    target: psycopg.Connection[Any],
    keys: dict[str, list[str]],
) -> dict[str, int]:
    """Stage the source rows of ``keys`` (and the lookup rows they need), one repeatable-read
    snapshot per source database, read after the change rows were: every change read is in it."""
    staged: dict[str, int] = {}
    for service in move.source_services:
        with source_snapshot(topology, service) as source:
            for table in move.sources_in(service):
                if table.moved:
                    captured = rules.of(table.table)
                    where = captured.stage_condition()
                    params: dict[str, Any] | None = {
                        "keys": "[" + ",".join(keys.get(captured.key_space, [])) + "]"
                    }
                elif table.table in rules.lookups:
                    ids = scalar(target, rules.lookups[table.table]) or []
                    where, params = "id = ANY(%(ids)s)", {"ids": list(ids)}
                else:
                    where, params = None, None
                staged[str(table)] = copy_table(source, target, table, where, params)
    return staged


def _record_outcome(target: psycopg.Connection[Any], move: Move, rules: SyncRules) -> None:
    """Keep every staged row's outcome with its group key (replacing those of the keys)."""
    for table in move.moved_tables:
        captured = rules.of(table.table)
        target.execute(
            sql.SQL(
                "INSERT INTO split.sync_outcome "
                "(move, source_table, source_id, key, outcome, reason) "
                "SELECT %s, o.source_table, o.source_id, {key}, o.outcome, o.reason "
                "FROM split_outcomes AS o JOIN {stage} AS s ON s.id = o.source_id "
                "WHERE o.source_table = %s"
            ).format(key=sql.SQL(captured.key_of("s")), stage=sql.Identifier(table.stage)),
            (move.name, table.table),
        )


def _forget_keys(target: psycopg.Connection[Any], move: Move, rules: SyncRules) -> None:
    for table in move.moved_tables:
        target.execute(
            "DELETE FROM split.sync_outcome AS synced USING sync_keys AS k "
            "WHERE synced.move = %s AND synced.source_table = %s "
            "AND k.source_table = %s AND synced.key = k.key",
            (move.name, table.table, rules.of(table.table).key_space),
        )


def _sync_transaction(
    topology: Topology,
    move: Move,
    say: Say,
    fault: FaultHook,
    changes: dict[str, list[Change]] | None,
) -> RoundReport:
    """The snapshot (``changes`` None) or one round, in ONE target transaction."""
    rules = rules_of(move)
    report = RoundReport(move=move.name)
    started = time.perf_counter()
    owner = service_spec(move.target).owner_role
    keys = _keys_of_changes(topology, move, changes) if changes is not None else {}
    with connect(topology, move.target) as target, target.transaction():
        target.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        # One sync (or cutover) of a move at a time: the others wait here.
        ledger = read_ledger(target, move.name, lock=True)
        if ledger is None or ledger.done:
            return report
        if changes is None:
            if ledger.snapshot_at is not None:
                return report
            staged = stage_sources(topology, move, target, say)
        else:
            if ledger.snapshot_at is None:
                raise SplitError(f"{move.name}: no snapshot yet (`rose split sync`)")
            target.execute(
                "CREATE TEMP TABLE sync_keys (source_table text NOT NULL, key jsonb NOT NULL) "
                "ON COMMIT DROP"
            )
            with target.cursor().copy("COPY sync_keys (source_table, key) FROM STDIN") as copy:
                for space, found in keys.items():
                    for key in found:
                        copy.write_row((space, key))
            # Its size, for the plans of the deletes below (a temporary table has no stats).
            target.execute("ANALYZE sync_keys")
            staged = _stage_keys(topology, move, rules, target, keys)
        if changes is not None:
            run_file(target, rules.delete_file)
            _forget_keys(target, move, rules)
        classify(target, move, read_only=False)
        outcome = read_outcome(target, move, staged)
        apply_move(target, move, bulk_load=changes is None)
        check_inserted(target, move, outcome)
        _record_outcome(target, move, rules)
        if changes is None:
            # With the check definitions it was moved by: the cutover refuses, before its
            # freeze, a snapshot another release's definitions moved (the verify would fail).
            target.execute(
                "UPDATE split.ledger SET snapshot_at = clock_timestamp(), sync_definitions = %s "
                "WHERE move = %s",
                (as_json(definitions_of(move)), move.name),
            )
            fault(move.name, "snapshot-before-commit")
        else:
            for service, rows in changes.items():
                if not rows:
                    continue
                target.execute(
                    """
                    INSERT INTO split.sync_position AS p
                        (move, source_database, applied_through, applied_changes, rounds,
                         applied_at)
                    VALUES (%s, %s, %s, %s, 1, clock_timestamp())
                    ON CONFLICT (move, source_database) DO UPDATE
                    SET applied_through = greatest(p.applied_through, excluded.applied_through),
                        applied_changes = p.applied_changes + excluded.applied_changes,
                        rounds = p.rounds + 1, applied_at = excluded.applied_at
                    """,
                    (move.name, service_spec(service).database, rows[-1].id, len(rows)),
                )
            fault(move.name, "round-before-commit")
        report.changes = sum(len(rows) for rows in (changes or {}).values())
        report.keys = sum(len(found) for found in keys.values())
    report.seconds = time.perf_counter() - started
    return report


# -- the release that took the snapshot ----------------------------------------------------------
def definitions_of(move: Move) -> dict[str, int]:
    """This release's check definitions of ``move``, as the ledger records a snapshot's."""
    return {check.name: check.definition for check in move.checks}


def snapshot_taken_otherwise(move: Move, ledger: LedgerEntry) -> str | None:
    """Why this release cannot cut over the sync's snapshot, or None: taken by a release whose
    check definitions differ (or that recorded none), it moved rows otherwise than this release
    (review M1: the cutover's verify failed, after the freeze, on every such row)."""
    if ledger.snapshot_at is None or ledger.done:
        return None
    recorded = ledger.sync_definitions
    if recorded is None:
        differs = "by a release that recorded no check definitions"
        newer = False
    else:
        # A check the snapshot's release recorded no definition of (one this release added)
        # differs too: nothing says that release moved its rows as this one does.
        taken = {name: int(number) for name, number in recorded.items()}
        changed = [
            (check, taken.get(check.name))
            for check in move.checks
            if taken.get(check.name) != check.definition
        ]
        if not changed:
            return None
        differs = (
            "with other check definitions ("
            + "; ".join(
                f"{check.target_table} {number or 'none'}, here {check.definition}"
                for check, number in changed
            )
            + ")"
        )
        newer = any(number is not None and number > check.definition for check, number in changed)
    if newer:
        todo = "use the rose of that release"
    else:
        todo = (
            f"`rose split abort --move {move.name}`, then `rose split sync --move {move.name}` "
            "again (a new snapshot, by this release)"
        )
    return (
        f"{move.name}: its sync's snapshot was taken {differs}, which moves rows otherwise than "
        f"this release does (db/split/{move.name}.sql's header says how), so its cutover's "
        f"verify would fail; the cutover refuses it before freezing anything: {todo}"
    )


# -- sync ----------------------------------------------------------------------------------------
def start(topology: Topology, move: Move, say: Say, fault: FaultHook) -> bool:
    """Capture and snapshot (each only once); False when the move is done already."""
    with connect(topology, move.target) as target:
        ensure_ledger(target, move.target)
        ledger = read_ledger(target, move.name)
        if ledger is not None and ledger.done:
            say(f"{move.name}: done ({ledger.state()}); nothing to sync")
            return False
        missing = missing_sources(topology, move)
        if missing:
            raise SplitError(f"{move.name}: no source table {', '.join(missing)}")
        if ledger is None or ledger.sync_started_at is None:
            for table in move.target_tables:
                if scalar(
                    target,
                    sql.SQL("SELECT EXISTS (SELECT FROM {})").format(
                        sql.Identifier(*table.split("."))
                    ),
                ):
                    raise SplitError(
                        f"{move.name}: {table} is not empty; sync moves into empty targets "
                        "(`rose split run` handles rows already there)"
                    )
        mark_started(target, move.name)
        target.execute(
            "UPDATE split.ledger SET sync_started_at = coalesce(sync_started_at, "
            "clock_timestamp()) WHERE move = %s",
            (move.name,),
        )
        snapshot_at = read_ledger(target, move.name)
    install(topology, move)
    fault(move.name, "after-capture")
    if snapshot_at is not None and snapshot_at.snapshot_at is not None:
        otherwise = snapshot_taken_otherwise(move, snapshot_at)
        if otherwise is not None:
            # Said now, not at the night's cutover; the rounds go on (the capture grows else).
            say(otherwise)
        return True
    started = time.perf_counter()
    _sync_transaction(topology, move, _quiet, fault, None)
    say(
        f"{move.name}: snapshot committed in {time.perf_counter() - started:.2f} s; "
        f"capturing changes ({lag(topology, move).describe()})"
    )
    return True


def apply_round(
    topology: Topology, move: Move, fault: FaultHook = crash_from_environment
) -> RoundReport:
    """Apply every change captured so far (nothing when there is none)."""
    changes = pending_changes(topology, move)
    if not any(changes.values()):
        return RoundReport(move=move.name)
    report = _sync_transaction(topology, move, _quiet, fault, changes)
    fault(move.name, "round-after-commit")
    _delete_applied(topology, move, changes)
    return report


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True


def sync(
    topology: Topology,
    moves: list[Move],
    say: Say,
    *,
    once: bool = False,
    interval: float = 0.2,
    report_every: float = 2.0,
    fault: FaultHook = crash_from_environment,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Start every move's sync, then apply rounds until SIGINT (or one round, ``once``),
    printing each move's lag every ``report_every`` seconds."""
    live = [move for move in moves if start(topology, move, say, fault)]
    stop = _Stop()
    previous = None
    if should_stop is None:
        try:
            previous = signal.signal(signal.SIGINT, stop)
        except ValueError:  # not the main thread
            previous = None
    try:
        last_report = 0.0
        while live:
            try:
                applied = {
                    move.name: _round_unless_cut_over(topology, move, fault) for move in live
                }
                for move in [move for move in live if _done(topology, move)]:
                    say(f"{move.name}: cut over; its sync ends")
                    live.remove(move)
            except psycopg.OperationalError as exc:
                # PostgreSQL restarting, a connection cut: nothing applied is lost (a round
                # commits whole, its change rows go only after), so wait and go on.
                say(f"lost the database ({str(exc).strip().splitlines()[0]}); retrying")
                if once or stop.requested:
                    raise
                time.sleep(1.0)
                continue
            now = time.monotonic()
            if once or now - last_report >= report_every:
                last_report = now
                for move in live:
                    report = applied[move.name]
                    say(
                        f"{move.name}: applied {report.changes:,} changes ({report.keys:,} keys) "
                        f"in {report.seconds:.2f} s; {lag(topology, move).describe()}"
                    )
            if once or stop.requested or (should_stop is not None and should_stop()):
                break
            if not any(report.changes for report in applied.values()):
                time.sleep(interval)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop.requested:
        say("sync stopped; the capture goes on: `rose split sync` resumes, `cutover` finishes")


def _round_unless_cut_over(topology: Topology, move: Move, fault: FaultHook) -> RoundReport:
    """A round; nothing when a cutover running meanwhile finished the move (and removed its
    change tables)."""
    try:
        return apply_round(topology, move, fault)
    except psycopg.errors.UndefinedTable:
        if _done(topology, move):
            return RoundReport(move=move.name)
        raise


def _done(topology: Topology, move: Move) -> bool:
    with connect(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
    return ledger is not None and ledger.done


# -- cutover -------------------------------------------------------------------------------------
def _mark_done(topology: Topology, move: Move, seconds: float) -> psycopg.Connection[Any] | None:
    """The end of the write pause: the move is done (its service takes the writes now). Returns
    a repeatable-read snapshot of the target taken under the ledger's lock, before this commit:
    no round is in flight then (each holds that lock) and none writes after it (each finds the
    move done), so the snapshot holds the target exactly as the move leaves it. None when the
    move was done already."""
    with connect(topology, move.target) as target, target.transaction():
        ledger = read_ledger(target, move.name, lock=True)
        if ledger is None or ledger.done:
            return None
        snapshot = _snapshot_of(topology, move)
        target.execute(
            "UPDATE split.ledger SET finished_at = clock_timestamp(), seconds = %s, "
            "checksums = NULL, checksum = NULL, verified_at = NULL, verification = NULL, "
            "aborted_at = NULL, aborted_by = NULL WHERE move = %s",
            (round(seconds, 3), move.name),
        )
    return snapshot


def _details(snapshot: psycopg.Connection[Any], move: Move) -> tuple[Any, ...]:
    """The ledger's record of the move (accounting from split.sync_outcome, the target's
    checksums and ids), read in ``snapshot``: the target as the move left it, whatever its
    service writes after the pause."""
    run_file(snapshot, OUTCOME_FILE)
    snapshot.execute(
        "INSERT INTO split_outcome SELECT source_table, source_id, outcome, reason "
        "FROM split.sync_outcome WHERE move = %s",
        (move.name,),
    )
    staged = {
        str(table): int(
            scalar(
                snapshot,
                "SELECT count(*) FROM split.sync_outcome WHERE move = %s AND source_table = %s",
                (move.name, table.table),
            )
        )
        for table in move.moved_tables
    }
    outcome = read_outcome(snapshot, move, staged, ids_staged=False)
    for table in move.target_tables:
        snapshot.execute(
            sql.SQL(
                "INSERT INTO split_inserted (target_table, wanted, inserted, ids) "
                "SELECT %s, count(*), count(*), range_agg(int8range(id, id, '[]')) FROM {}"
            ).format(sql.Identifier(*table.split("."))),
            (table,),
        )
    inserted = {
        table: int(rows)
        for table, rows in snapshot.execute("SELECT target_table, inserted FROM split_inserted")
    }
    checksums = recorded_checksums(move, target_checksums(snapshot, move))
    return ledger_record(snapshot, outcome, inserted, checksums)


def _record_details(
    topology: Topology, move: Move, details: tuple[Any, ...], write_pause: float | Decimal | None
) -> None:
    with connect(topology, move.target) as target, target.transaction():
        target.execute(
            """
            UPDATE split.ledger
            SET source_rows = %s, moved_rows = %s, collapsed_rows = %s, skipped_rows = %s,
                reasons = %s, inserted = %s, checksum = %s, checksums = %s, inserted_ids = %s,
                write_pause = %s
            WHERE move = %s
            """,
            (
                *details,
                None if write_pause is None else round(float(write_pause), 3),
                move.name,
            ),
        )
        target.execute("DELETE FROM split.sync_outcome WHERE move = %s", (move.name,))
        target.execute("DELETE FROM split.sync_position WHERE move = %s", (move.name,))


def _snapshot_of(topology: Topology, move: Move) -> psycopg.Connection[Any]:
    connection = connect(topology, move.target)
    connection.autocommit = False
    connection.isolation_level = IsolationLevel.REPEATABLE_READ
    connection.execute("SELECT 1")  # the snapshot is taken here
    return connection


def verify_recorded(topology: Topology, move: Move) -> MoveVerification:
    """The frozen sources against the target as the ledger recorded it at the cutover (its
    checksums): true whatever the service wrote to the target since."""
    with connect(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
        result = MoveVerification(move=move, ledger=ledger)
        if ledger is None or not ledger.done or not ledger.checksums:
            result.problems.append("not recorded by a cutover")
            return result
        count_sources(topology, result)
        if result.problems:
            return result
        result.problems += accounting_problems(ledger, result.source_rows_now)
        with source_sessions(topology, move, ledger) as sources:
            for check in move.checks:
                entry = ledger.checksums[check.name]
                recorded = recorded_checksum(entry)
                source_sum = checksum(sources, check.view_for(entry), recorded.method)[0]
                result.checks.append(
                    CheckResult(check.name, check.target_table, check.bucket, source_sum, recorded)
                )
        record_verification(target, result)
    return result


def _differs(move: Move, verification: MoveVerification) -> str:
    return (
        f"{move.name}: the cutover's verify found differences: "
        + "; ".join(verification.differences())
        + f". The move is recorded, its sources stay frozen: `rose split abort --move "
        f"{move.name}` goes back to the monolith (unless its service wrote to it since)"
    )


def cutover_move(
    topology: Topology,
    move: Move,
    say: Say,
    fault: FaultHook = crash_from_environment,
    lock_timeout: float = FREEZE_LOCK_TIMEOUT,
) -> CutoverReport:
    report = CutoverReport(move=move)
    with connect(topology, move.target) as target:
        ensure_ledger(target, move.target)
        ledger = read_ledger(target, move.name)
    if ledger is not None and ledger.cut_over_unrecorded:
        # A cutover that died between the end of the pause and its record: the target now
        # (its service is not to write before the `verified` line), and the pause it measured.
        report.done_before = True
        say(
            f"{move.name}: the cutover that ended its write pause at {ledger.finished_at:%H:%M:%S} "
            "stopped before recording the move: recording it now"
        )
        with _snapshot_of(topology, move) as snapshot:
            details = _details(snapshot, move)
            snapshot.rollback()
        _record_details(topology, move, details, write_pause=ledger.seconds)
        return _verify_cut(topology, move, report, say)
    if ledger is not None and ledger.done:
        report.done_before = True
        if ledger.sync_started_at is not None and ledger.verified_at is None:
            return _verify_cut(topology, move, report, say)
        if ledger.sync_started_at is not None:
            remove(topology, move)
        say(f"{move.name}: done ({ledger.state()}); nothing to cut over")
        return report
    if ledger is None or ledger.snapshot_at is None:
        raise SplitError(f"{move.name}: not synced (`rose split sync --move {move.name}` first)")
    otherwise = snapshot_taken_otherwise(move, ledger)
    if otherwise is not None:
        raise SplitError(otherwise)
    # The backlog before the freeze, so that the drain under it is short.
    for _ in range(3):
        if apply_round(topology, move, fault).changes < 100:
            break
    started = time.perf_counter()
    freeze(topology, [move], say, lock_timeout)
    fault(move.name, "cutover-after-freeze")
    while True:
        round_report = apply_round(topology, move, fault)
        report.drained += round_report.changes
        if round_report.changes == 0:
            break
    # The target as the move leaves it, for the record and the verify after the pause.
    as_cut = _mark_done(topology, move, time.perf_counter() - started)
    if as_cut is None:
        raise SplitError(f"{move.name}: done meanwhile by another cutover")
    with as_cut:
        report.write_pause = time.perf_counter() - started
        fault(move.name, "cutover-after-record")
        details = _details(as_cut, move)
        as_cut.rollback()
    _record_details(topology, move, details, write_pause=report.write_pause)
    say(
        f"{move.name}: cut over: drained {report.drained:,} changes; write pause "
        f"{report.write_pause:.2f} s (freeze to recorded); its sources stay frozen"
    )
    return _verify_cut(topology, move, report, say)


def _verify_cut(topology: Topology, move: Move, report: CutoverReport, say: Say) -> CutoverReport:
    """The frozen sources against the target as recorded; then the capture goes."""
    report.verification = verify_recorded(topology, move)
    if not report.verification.ok:
        raise SplitError(_differs(move, report.verification))
    remove(topology, move)
    say(f"{move.name}: verified: the frozen sources match the target as cut over")
    return report


def cutover(
    topology: Topology,
    moves: list[Move],
    say: Say,
    fault: FaultHook = crash_from_environment,
) -> list[CutoverReport]:
    """One move at a time: each move's sources are frozen only for its own drain and verify.
    Refused before anything while the service of a move still to cut over runs: the cutover
    records the target as it is, and what the service wrote before would be taken as moved."""
    refuse_while_services_run(
        topology,
        [move for move in moves if _to_cut_over(ledger_of(topology, move))],
        "rose split cutover",
        CUTOVER_ADVICE,
    )
    return [cutover_move(topology, move, say, fault) for move in moves]


CUTOVER_ADVICE = (
    'Stop them until their moves are cut over (docs/runbook-split.md, "The online night", '
    "step 2: start each move's service once its move is cut over and verified): the cutover "
    "records the target as it is, and verify, finalize and abort compare with that record. "
    "Nothing was frozen or written."
)


def _to_cut_over(ledger: LedgerEntry | None) -> bool:
    """Whether a cutover would drain into the move's target or record it."""
    return ledger is not None and (ledger.syncing or ledger.cut_over_unrecorded)


def capture_left(topology: Topology, move: Move) -> list[str]:
    found = []
    for service in move.source_services:
        with connect(topology, service) as source:
            found += [
                f"{service_spec(service).database} {item}"
                for item in capture_objects(source, move.name)
            ]
    return found


def stop_sync(topology: Topology, move: Move) -> list[str]:
    """Remove the capture and the sync's records (abort, finalize)."""
    removed = remove(topology, move)
    with connect(topology, move.target) as target:
        if scalar(target, "SELECT to_regclass('split.sync_outcome') IS NOT NULL"):
            target.execute("DELETE FROM split.sync_outcome WHERE move = %s", (move.name,))
            target.execute("DELETE FROM split.sync_position WHERE move = %s", (move.name,))
    return removed


__all__ = [
    "CutoverReport",
    "Lag",
    "RoundReport",
    "apply_round",
    "capture_left",
    "cutover",
    "lag",
    "operator",
    "stop_sync",
    "sync",
]
