"""``rose split status``: the ledgers as one table, what is frozen (from the catalogs) and what
finalize dropped (from the records in the source databases), without changing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ops.db.topology import Topology
from ops.split.common import LedgerEntry, connect, read_ledger
from ops.split.finalize import dropped_of, owned_tables, source_records
from ops.split.freeze import frozen_now
from ops.split.moves import MOVES, Move
from ops.split.sync import snapshot_taken_otherwise


@dataclass
class MoveStatus:
    move: Move
    state: str
    when: datetime | None = None
    by: str | None = None
    ledger: LedgerEntry | None = None

    def rows(self) -> str:
        ledger = self.ledger
        if ledger is None or ledger.source_rows is None:
            return ""
        return (
            f"{ledger.source_rows:,} = {ledger.moved_rows:,} moved + "
            f"{ledger.collapsed_rows:,} collapsed + {ledger.skipped_rows:,} skipped"
        )

    def checksums(self) -> str:
        recorded = (self.ledger.checksums or {}) if self.ledger else {}
        return "; ".join(
            f"{entry['target_table']} {int(entry['rows']):,} rows xor {entry['xor'][:8]}"
            for entry in recorded.values()
        )


@dataclass
class SplitStatus:
    moves: list[MoveStatus] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)


def _latest(*events: tuple[datetime | None, str | None]) -> tuple[datetime | None, str | None]:
    happened = [(when, who) for when, who in events if when is not None]
    if not happened:
        return None, None
    return max(happened, key=lambda event: event[0])


def move_status(
    move: Move, ledger: LedgerEntry | None, dropped: list[dict[str, Any]]
) -> MoveStatus:
    if ledger is None:
        return MoveStatus(move, "not started")
    owned = len(owned_tables(move))
    if ledger.finalized_at is not None:
        state = "finalized"
    elif dropped:
        state = f"finalizing: {len(dropped)} of {owned} sources dropped (finalize completes it)"
    elif ledger.finalizing:
        state = "verified (a finalize stopped before dropping)"
    elif ledger.cut_over_unrecorded:
        state = "cut over; its cutover stopped before recording it (`rose split cutover` does)"
    elif ledger.done and ledger.verified_at is not None:
        state = "verified"
    elif ledger.done and ledger.verification is not None:
        state = "moved, verify found differences"
    elif ledger.done:
        state = "moved, not verified"
    elif ledger.sync_started_at is not None and ledger.snapshot_at is not None:
        if snapshot_taken_otherwise(move, ledger) is not None:
            state = (
                "syncing online, snapshot taken by another release (other check definitions): "
                f"`rose split cutover` refuses it; `rose split abort --move {move.name}`, then "
                "`rose split sync` again"
            )
        else:
            state = "syncing online (snapshot committed; `rose split cutover` finishes it)"
    elif ledger.sync_started_at is not None:
        state = "syncing online: capturing, snapshot not committed (`rose split sync` resumes)"
    elif ledger.aborted:
        state = "aborted"
    else:
        state = "started, not finished: nothing in the target"
    if ledger.done and ledger.write_pause is not None:
        state += f" (online; write pause {ledger.write_pause} s)"
    when, by = _latest(
        (ledger.started_at, ledger.run_by),
        (ledger.finished_at, ledger.run_by),
        (ledger.verified_at, ledger.verified_by),
        (ledger.finalizing_at, None),
        (ledger.finalized_at, ledger.finalized_by),
        (ledger.aborted_at, ledger.aborted_by),
    )
    return MoveStatus(move, state, when, by, ledger)


def split_status(topology: Topology) -> SplitStatus:
    records = source_records(topology)
    status = SplitStatus()
    for move in MOVES:
        with connect(topology, move.target) as target:
            ledger = read_ledger(target, move.name)
        status.moves.append(move_status(move, ledger, dropped_of(move, records)))
    status.frozen = frozen_now(topology)
    status.dropped = [
        {"service": service, **record}
        for service, tables in records.items()
        for record in tables.values()
    ]
    return status
