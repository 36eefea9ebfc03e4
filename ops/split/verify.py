"""``rose split verify``.

Before finalize, verify compares, for each moved move, its sources with its target:
- the accounting: the source tables still hold the rows the move read (they are frozen), and
  every one of them is moved, collapsed or skipped with a reason (the ledger lists the ids);
- per check view (``db/split/checksums``), the row counts and the order-independent
  checksums of both sides, under the same fixed session settings; when they differ, per-range
  buckets locate the rows.
The result goes into the ledger (``verified_at`` only when nothing differs).

Once finalize has dropped a move's sources, verify compares the target with what the ledger
recorded when the move committed: every row the move inserted must still be there (a loss is a
difference, with the ids), and the checksums tell whether the rows changed since (the services
write to them: a note, not a difference).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ops.db.checksums import Checksum
from ops.db.topology import Topology
from ops.split.checksum import Located, checksum, locate
from ops.split.common import (
    DEFAULT_JOBS,
    LedgerEntry,
    as_json,
    count_rows,
    databases_of,
    open_sessions,
    operator,
    read_ledger,
    reused_sessions,
    run_file,
    session,
    submit_in_context,
    table_exists,
)
from ops.split.moves import Check, Move, recorded_definition

SHOWN_LOST = 12


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
    # Against the ledger's checksums of the commit (sources dropped): what changed since.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.finalized:
            # Rows may change after the move (the services own them now); only a loss counts.
            return self.ledger is not None and not self.problems
        return (
            self.ledger is not None
            and self.ledger.done
            and not self.problems
            and all(check.ok for check in self.checks)
        )

    def differences(self) -> list[str]:
        found = list(self.problems)
        if self.finalized:
            return found  # changes since the commit are notes, not differences
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


def _listed_rows(ledger: LedgerEntry) -> list[tuple[str, list[int], str, str]]:
    """The source rows the ledger lists, as (table, ids, outcome, reason) per table and reason."""
    return [
        (table, ids, outcome, reason)
        for outcome, reasons in (ledger.reasons or {}).items()
        for reason, entry in reasons.items()
        for table, ids in entry["rows"].items()
    ]


def accounting_problems(ledger: LedgerEntry, source_rows_now: dict[str, int]) -> list[str]:
    problems: list[str] = []
    if ledger.source_rows is None:
        return [f"the ledger records no accounting of the move ({ledger.state()})"]
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
def source_sessions(
    topology: Topology, move: Move, ledger: LedgerEntry
) -> Iterator[list[psycopg.Connection[Any]]]:
    """One session per source database, with the move's check views and split_listed filled."""
    listed = _listed_rows(ledger)
    with ExitStack() as stack:
        sessions = []
        for service in move.checked_in:
            source = stack.enter_context(session(topology, service))
            run_file(source, move.checksum_file(service))
            if table_exists(source, "pg_temp.split_listed"):
                source.execute("TRUNCATE split_listed")
                # The ids of a table and reason as one array (likes lists 15,602 rows: a row
                # at a time, they were formatted one by one in Python).
                with source.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO split_listed (source_table, source_id, outcome, reason) "
                        "SELECT %s, unnest(%s::bigint[]), %s, %s",
                        listed,
                    )
            sessions.append(source)
        yield sessions


def verify_move(
    topology: Topology, move: Move, *, against_sources: bool = False
) -> MoveVerification:
    """Sources against target (or, once finalize has dropped the sources, the target against
    the commit's record; ``against_sources`` insists on the sources: finalize's re-verify)."""
    with session(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
        if ledger is not None and (ledger.syncing or ledger.cut_over_unrecorded):
            return MoveVerification(move=move, ledger=ledger, problems=[ledger.state()])
        if ledger is None or not ledger.done:
            return MoveVerification(
                move=move, ledger=ledger, problems=["not moved yet (`rose split run`)"]
            )
        if not against_sources and (ledger.finalized_at is not None or ledger.finalizing):
            # The sources are (or may be) gone: compare with what the move committed.
            return verify_against_commit(target, move, ledger, strict=False)
        run_file(target, move.checksum_file("target"))
        result = compare_with_sources(topology, move, target, ledger)
        record_verification(target, result)
    return result


# A check view's checksum on one side, with its smallest and largest bucket (see checksum).
SideChecksum = tuple[Checksum, int | None, int | None]


def compare_with_sources(
    topology: Topology,
    move: Move,
    target: psycopg.Connection[Any],
    ledger: LedgerEntry,
    target_side: Mapping[str, SideChecksum] | None = None,
) -> MoveVerification:
    """The move's sources now against its target as ``target`` sees it (with the target's
    check views): the accounting, then per check view the checksums of both sides, and where
    they differ the buckets that hold the differences. ``target_side``: the target's checksums
    already taken on ``target`` (`rose split run` takes them in the move's transaction, for
    the ledger, and compares before it commits), else taken here, beside the sources'."""
    result = MoveVerification(move=move, ledger=ledger)
    count_sources(topology, result)
    if result.problems:
        return result
    result.problems += accounting_problems(ledger, result.source_rows_now)
    with (
        source_sessions(topology, move, ledger) as sources,
        ThreadPoolExecutor(max_workers=2) as sides,
    ):
        for check in move.checks:
            # Always this release's definition: a move an earlier release committed is held to
            # what this release moves (review 5: compared by its own, older definition, the
            # EXPIRED attempts of legacy closed orders, whose late payments orders would ignore,
            # verified clean). Where it differs, the problem says why and what to do.
            view = check.view
            # The two sides at the same time (their own connections, their own backends).
            source_side = sides.submit(checksum, sources, view)
            target_sum, target_low, target_high = (
                target_side[check.name] if target_side is not None else checksum([target], view)
            )
            source_sum, source_low, source_high = source_side.result()
            found = CheckResult(
                check.name, check.target_table, check.bucket, source_sum, target_sum
            )
            if not found.ok:
                lows = [value for value in (source_low, target_low) if value is not None]
                highs = [value for value in (source_high, target_high) if value is not None]
                found.located = locate(sources, [target], view, min(lows), max(highs))
                earlier = _earlier_definition(check, ledger)
                if earlier is not None:
                    result.problems.append(
                        f"{check.target_table}: moved by an earlier release (check definition "
                        f"{earlier}, now {check.definition}), which moved these rows otherwise "
                        f"than this release does (db/split/{move.name}.sql's header says how): "
                        f"`rose split abort --move {move.name}`, then run it again"
                    )
            result.checks.append(found)
    return result


def _earlier_definition(check: Check, ledger: LedgerEntry) -> int | None:
    """The check definition the ledger recorded for ``check`` when older than this release's
    (a move committed by an earlier release), else None."""
    recorded = (ledger.checksums or {}).get(check.name)
    if recorded is None:
        return None
    number = recorded_definition(recorded)
    return number if number < check.definition else None


def count_sources(topology: Topology, result: MoveVerification) -> None:
    """The rows the move's moved source tables hold now (a missing one is a problem)."""
    move = result.move
    for service in move.source_services:
        with session(topology, service) as source:
            for table in move.sources_in(service):
                if not table.moved:
                    continue
                if not table_exists(source, f"legacy.{table.table}"):
                    result.problems.append(f"source table {table} is gone")
                else:
                    result.source_rows_now[str(table)] = count_rows(source, f"legacy.{table.table}")


def record_verification(target: psycopg.Connection[Any], result: MoveVerification) -> None:
    """The result into the ledger (``verified_at`` only when nothing differs)."""
    target.execute(
        """
        UPDATE split.ledger
        SET verified_at = CASE WHEN %s THEN clock_timestamp() END, verification = %s,
            verified_by = %s
        WHERE move = %s
        """,
        (result.ok, as_json(result.as_json()), operator(), result.move.name),
    )


def recorded_checksum(entry: dict[str, Any]) -> Checksum:
    """A checksum as the ledger records it (``Checksum.as_dict``)."""
    return Checksum.from_dict(entry)


def lost_rows(
    target: psycopg.Connection[Any], ledger: LedgerEntry
) -> dict[str, tuple[int, list[int]]]:
    """Per target table, how many of the rows the move inserted are gone, and the first ids."""
    lost: dict[str, tuple[int, list[int]]] = {}
    for table, ids in (ledger.inserted_ids or {}).items():
        schema, name = table.split(".")
        missing = sql.SQL(
            "SELECT wanted.id "
            "FROM unnest(%(ids)s::int8multirange) AS part "
            "CROSS JOIN generate_series(lower(part), upper(part) - 1) AS wanted (id) "
            "LEFT JOIN {table} AS kept ON kept.id = wanted.id "
            "WHERE kept.id IS NULL ORDER BY wanted.id"
        ).format(table=sql.Identifier(schema, name))
        gone = [row[0] for row in target.execute(missing, {"ids": ids})]
        if gone:
            lost[table] = (len(gone), gone[:SHOWN_LOST])
    return lost


def verify_against_commit(
    target: psycopg.Connection[Any], move: Move, ledger: LedgerEntry, *, strict: bool
) -> MoveVerification:
    """The target now against the ledger's record of the commit. A row the move inserted that
    is gone is a problem; rows changed since are a problem only when ``strict`` (finalize,
    before the services take writes), else a note."""
    result = MoveVerification(move=move, ledger=ledger, finalized=not strict)
    recorded = ledger.checksums or {}
    if not recorded:
        result.problems.append(
            "the ledger has no checksums of the commit (the move ran with an earlier version)"
        )
        return result
    for table, (count, ids) in lost_rows(target, ledger).items():
        shown = ", ".join(str(found) for found in ids)
        more = f" and {count - len(ids):,} more" if count > len(ids) else ""
        result.problems.append(
            f"{table}: {count:,} of the rows the move inserted are gone (ids {shown}{more})"
        )
    run_file(target, move.checksum_file("target"))
    for check in move.checks:
        then = recorded_checksum(recorded[check.name])
        # With the columns the recorded checksum covered (an earlier definition's view).
        now = checksum([target], check.view_for(recorded[check.name]), then.method)[0]
        found = CheckResult(check.name, check.target_table, check.bucket, then, now)
        result.checks.append(found)
        if found.ok:
            continue
        change = (
            f"{check.target_table}: {then.rows:,} rows when the move committed, {now.rows:,} now; "
            "the checksums differ"
        )
        if strict:
            result.problems.append(change + " (changed since the move)")
        else:
            result.notes.append(change + ": changed since the move (the service writes to it)")
    return result


def verify_moves(
    topology: Topology,
    moves: list[Move],
    jobs: int = DEFAULT_JOBS,
    *,
    against_sources: bool = False,
) -> list[MoveVerification]:
    """Verify ``moves``, ``jobs`` at a time (each reads its own sources and target); the results
    in the order of ``moves``. The first error is raised once all have ended."""
    verify_one = functools.partial(verify_move, against_sources=against_sources)
    with reused_sessions(), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        open_sessions(topology, databases_of(moves))
        futures = [submit_in_context(pool, verify_one, topology, move) for move in moves]
        return [future.result() for future in futures]
