"""``rose db backup`` and ``rose db restore``: every service database's rows, and the proof that a
restore put back what the backup took.

A backup is a directory:

    <database>.dump        pg_dump's custom format of the service's own schema, taken in a
                           snapshot the tool exported (the version table's row is left out: a
                           restore migrates first, then only rows go in);
    <database>.split.dump  where `rose split` left schemas in the database (the monolith's
                           ``legacy`` tables, before finalize or kept by it; the ledgers and
                           finalize's records in ``split``; an online sync's change tables):
                           those schemas whole, in the same snapshot. Nothing else holds them;
    manifest.json          written last, so a directory without one is no backup: per database
                           each dump's size and sha256, its Alembic revisions, and every table's
                           row count and checksum, read in the dumps' own snapshot.

Each database is consistent on its own. Their snapshots are all taken before the first dump,
those of the databases that send messages first, so what a sender's backup says was delivered
is in its receiver's backup too (``_snapshots``; docs/deployment.md says what else a restore
lives with). A restore goes onto a server whose databases hold no rows yet:

1. the manifest and every file are checked (size, sha256), every revision must be one this
   release knows, and a database that already holds rows is refused, unless it holds exactly the
   backup's (a rerun after an interrupted restore leaves it alone); nothing has changed yet;
2. provisioning, then each database migrated to the backup's revision (not this release's head);
3. ``pg_restore --data-only --disable-triggers --single-transaction`` per database, then the
   split's schemas whole when the backup has them, and every table's count and checksum
   compared with the manifest's;
4. the migrations on to this release's head (an earlier release's backup is upgraded as any
   earlier database is), the FDW edges, and the check that the cluster is as ``db/`` declares.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from apps.common.outbox import OUTBOX
from apps.registry import SERVICES, service_spec
from ops.db.binaries import (
    client_tool_target,
    pg_binary,
    sequence_values,
    tables_without_data,
)
from ops.db.check import LEGACY_SCHEMA, check
from ops.db.checksums import CURRENT_HASH, MD5_HASH, Checksum, table_checksum
from ops.db.connections import Connections, connect, scalar, services_connected
from ops.db.credentials import Credentials
from ops.db.exclusive import converging_alone
from ops.db.lifecycle import converge_databases
from ops.db.migrate import alembic_config, services_with_migrations, steps_line
from ops.db.provision import provision
from ops.db.topology import Topology
from ops.paths import private_directory, private_file, sha256_of, sync_directory
from ops.split.capture import CAPTURE_SCHEMA
from ops.split.common import SPLIT_SCHEMA

MANIFEST = "manifest.json"
# The schemas `rose split` makes in the services' databases (not migrated: created by the split
# and restored whole).
SPLIT_SCHEMAS = (LEGACY_SCHEMA, SPLIT_SCHEMA, CAPTURE_SCHEMA)
FORMAT = 1
VERSION_TABLE = "alembic_version"
# pg_dump and pg_restore of one database; a larger one needs its own arrangements anyway.
TOOL_TIMEOUT = 6 * 3600

Say = Callable[[str], None]


class BackupError(Exception):
    """What stopped a backup or a restore, in a line a DBA acts on."""


@dataclass(frozen=True)
class ArchiveFile:
    file: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ArchiveFile:
        return cls(file=str(entry["file"]), size=int(entry["size"]), sha256=str(entry["sha256"]))

    @classmethod
    def of(cls, path: Path) -> ArchiveFile:
        return cls(file=path.name, size=path.stat().st_size, sha256=sha256_of(path))


def in_split_schema(table: str) -> bool:
    return table.split(".", 1)[0] in SPLIT_SCHEMAS


@dataclass(frozen=True)
class DatabaseBackup:
    service: str
    database: str
    # The service's own schema (its file, size and sha256 stand flat in the manifest).
    own: ArchiveFile
    revisions: list[str]
    tables: dict[str, Checksum]
    # The split's schemas, whole (None: the database had none).
    split: ArchiveFile | None = None

    @property
    def rows(self) -> int:
        return sum(checksum.rows for checksum in self.tables.values())

    def archives(self) -> list[tuple[ArchiveFile, list[str]]]:
        """Each dump with the tables whose rows it holds."""
        found = [(self.own, [name for name in self.tables if not in_split_schema(name)])]
        if self.split is not None:
            found.append((self.split, [name for name in self.tables if in_split_schema(name)]))
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            **self.own.as_json(),
            "revisions": self.revisions,
            "tables": {name: checksum.as_dict() for name, checksum in self.tables.items()},
            **({"split": self.split.as_json()} if self.split is not None else {}),
        }

    @classmethod
    def from_json(cls, database: str, entry: dict[str, Any]) -> DatabaseBackup:
        return cls(
            service=str(entry["service"]),
            database=database,
            own=ArchiveFile.from_json(entry),
            revisions=[str(revision) for revision in entry["revisions"]],
            tables={
                name: Checksum.from_dict(checksum) for name, checksum in entry["tables"].items()
            },
            split=ArchiveFile.from_json(entry["split"]) if "split" in entry else None,
        )


@dataclass
class Outcome:
    """What a backup or a restore did, a line per database, and what it noticed on the way."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


def _describe(entry: DatabaseBackup) -> str:
    return f"{_counted(len(entry.tables), 'table')}, {_counted(entry.rows, 'row')}"


@contextmanager
def _session(topology: Topology, service: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the service's database whose text forms of values do not
    depend on the server's settings: a checksum hashes each row's text, and the backup's and
    the restore's servers may be configured differently."""
    with connect(topology.admin_url(service)) as connection:
        for setting, value in (
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
        ):
            connection.execute("SELECT set_config(%s, %s, false)", (setting, value))
        yield connection


def backup_checksum(connection: psycopg.Connection[Any], name: str) -> Checksum:
    """A table's checksum in the open transaction: its values hashed (no text printed: half the
    cost), or, for a table with a column type PostgreSQL has no hash for (json, point), its
    text's md5. The attempt runs in a savepoint, so its failure leaves the transaction and its
    snapshot as they were."""
    try:
        with connection.transaction():
            return table_checksum(connection, name, CURRENT_HASH)
    except psycopg.errors.UndefinedFunction:
        return table_checksum(connection, name, MD5_HASH)


def _tables(connection: psycopg.Connection[Any], schemas: list[str]) -> list[str]:
    """The tables of ``schemas`` that hold rows (the version table's row is the migrations')."""
    rows = connection.execute(
        "SELECT format('%%s.%%s', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind = 'r' AND c.relname <> %s ORDER BY 1",
        (schemas, VERSION_TABLE),
    ).fetchall()
    return [str(row[0]) for row in rows]


def _split_schemas(connection: psycopg.Connection[Any]) -> list[str]:
    """The split's schemas this database has."""
    rows = connection.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1",
        (list(SPLIT_SCHEMAS),),
    ).fetchall()
    return [str(row[0]) for row in rows]


def _revisions(connection: psycopg.Connection[Any], schema: str) -> list[str] | None:
    """The database's Alembic revisions; None when it has no version table."""
    if scalar(connection, "SELECT to_regclass(%s) IS NULL", (f"{schema}.{VERSION_TABLE}",)):
        return None
    rows = connection.execute(f'SELECT version_num FROM "{schema}".{VERSION_TABLE} ORDER BY 1')
    return [str(row[0]) for row in rows]


def _others(connection: psycopg.Connection[Any], schema: str) -> list[tuple[str, int]]:
    """Other schemas of the database with tables of their own (made by hand): neither the
    service's nor the split's, so not in its backup."""
    rows = connection.execute(
        "SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname <> %s AND n.nspname <> ALL(%s) "
        "AND n.nspname <> 'information_schema' "
        "AND n.nspname NOT LIKE 'pg\\_%%' GROUP BY 1 ORDER BY 1",
        (schema, list(SPLIT_SCHEMAS)),
    ).fetchall()
    return [(str(name), int(count)) for name, count in rows]


def _write_durably(path: Path, text: str) -> None:
    """``path`` holds ``text`` entirely or not at all, and survives a crash once this returns."""
    partial = path.with_name(path.name + ".part")
    with private_file(partial).open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    sync_directory(path.parent)


def run_client_tool(arguments: list[str], url: str, what: str) -> None:
    dsn, environment = client_tool_target(url)
    done = subprocess.run(
        [*arguments, f"--dbname={dsn}"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        env=environment,
    )
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip() or f'exit {done.returncode}'}")


# -- backup -------------------------------------------------------------------------------------
def _pg_dump(
    topology: Topology, service: str, snapshot: str, arguments: list[str], path: Path
) -> ArchiveFile:
    """One pg_dump archive in ``snapshot`` at ``path``, durable (or no file at all)."""
    partial = path.with_name(path.name + ".part")
    try:
        run_client_tool(
            [
                str(pg_binary("pg_dump")),
                "--format=custom",
                f"--snapshot={snapshot}",
                *arguments,
                f"--file={private_file(partial)}",
            ],
            topology.admin_url(service),
            f"pg_dump of {service_spec(service).database}",
        )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    with partial.open("rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)
    return ArchiveFile.of(path)


@dataclass
class Snapshot:
    """A service database's open REPEATABLE READ transaction and the snapshot it exported:
    everything of the database's backup is read in it."""

    service: str
    connection: psycopg.Connection[Any]
    name: str


@contextmanager
def _snapshots(topology: Topology) -> Iterator[list[Snapshot]]:
    """One exported snapshot per service database, every one taken before any dump starts, those
    of the databases that send messages (an outbox) first. A message their snapshot says was
    delivered was applied by its receiver before that, so the receiver's later snapshot has it;
    one sent later is in no snapshot of its sender, or is undelivered there and is sent again
    after a restore (receivers apply a message once). Dumped one after another in their own
    transactions, a sender dumped last could say "delivered" of what its receiver's backup,
    taken earlier, never applied. The cost: every snapshot stays open, and holds back vacuum
    in its database, for the whole backup rather than for its own dump only."""
    with ExitStack() as sessions:
        opened = [
            (service, sessions.enter_context(_session(topology, service))) for service in SERVICES
        ]
        senders_first = sorted(
            opened, key=lambda each: not _sends_messages(each[1], service_spec(each[0]).name)
        )
        taken: list[Snapshot] = []
        try:
            for service, connection in senders_first:
                connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                name = scalar(connection, "SELECT pg_export_snapshot()")
                taken.append(Snapshot(service, connection, name))
            yield sorted(taken, key=lambda snapshot: list(SERVICES).index(snapshot.service))
        finally:
            for snapshot in taken:
                snapshot.connection.execute("ROLLBACK")


def _sends_messages(connection: psycopg.Connection[Any], schema: str) -> bool:
    return bool(
        scalar(
            connection,
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
            (schema, OUTBOX),
        )
    )


def _dump(
    snapshot: Snapshot, topology: Topology, directory: Path, outcome: Outcome
) -> DatabaseBackup:
    service, connection = snapshot.service, snapshot.connection
    spec = service_spec(service)
    split: ArchiveFile | None = None
    revisions = _revisions(connection, spec.name)
    if revisions is None:
        if service in services_with_migrations():
            raise BackupError(
                f"{spec.database} has no {spec.name}.{VERSION_TABLE}: it was never "
                "migrated (`rose db migrate`), so there is nothing of rose's to back up"
            )
        revisions = []
    split_schemas = _split_schemas(connection)
    names = _tables(connection, [spec.name, *split_schemas])
    tables = {name: backup_checksum(connection, name) for name in names}
    for schema, count in _others(connection, spec.name):
        outcome.notes.append(
            f"{spec.database}: schema {schema} ({_counted(count, 'table')}) is neither "
            f"{service}'s own nor the split's and is not in this backup"
        )
    if CAPTURE_SCHEMA in split_schemas:
        outcome.notes.append(
            f"{spec.database}: an online split is syncing (schema {CAPTURE_SCHEMA}): "
            "each database is backed up at its own moment, so after a restore `rose "
            "split abort` the moves that were syncing and sync them again"
        )
    own = _pg_dump(
        topology,
        service,
        snapshot.name,
        [f"--schema={spec.name}", f"--exclude-table-data={spec.name}.{VERSION_TABLE}"],
        directory / f"{spec.database}.dump",
    )
    if split_schemas:
        split = _pg_dump(
            topology,
            service,
            snapshot.name,
            [f"--schema={schema}" for schema in split_schemas],
            directory / f"{spec.database}.split.dump",
        )
    return DatabaseBackup(
        service=service,
        database=spec.database,
        own=own,
        revisions=revisions,
        tables=tables,
        split=split,
    )


def back_up(topology: Topology, directory: Path, say: Say = print) -> Outcome:
    """Every service database into ``directory`` (new or empty), the manifest last."""
    if directory.exists() and not directory.is_dir():
        raise BackupError(f"{directory} is a file: a backup goes into a new or empty directory")
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: a backup goes into a new or empty directory")
    try:
        private_directory(directory)
        return _back_up_into(topology, directory, say)
    except OSError as exc:
        where = exc.filename or directory
        raise BackupError(f"cannot write {where}: {exc.strerror or exc}") from None


def _back_up_into(topology: Topology, directory: Path, say: Say) -> Outcome:
    outcome = Outcome()
    entries: dict[str, DatabaseBackup] = {}
    with _snapshots(topology) as snapshots:
        for snapshot in snapshots:
            entry = _dump(snapshot, topology, directory, outcome)
            entries[entry.database] = entry
            line = (
                f"{entry.database}: {_describe(entry)}, {entry.own.size} bytes -> {entry.own.file}"
            )
            outcome.lines.append(line)
            say(line)
    manifest = {
        "format": FORMAT,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "server_version": _server_version(topology),
        "databases": {database: entry.as_json() for database, entry in entries.items()},
    }
    _write_durably(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return outcome


def check_keep(keep: int) -> None:
    """A backup that prunes keeps at least itself."""
    if keep < 1:
        raise BackupError(f"--keep {keep}: keep at least 1 backup (the one just made)")


def prune_backups(root: Path, keep: int, made: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Of the whole backups in ``root`` (directories with a manifest this release reads), remove
    all but the ``keep`` newest, ``made`` (the backup just made) always among those kept;
    returns (removed, directories left alone because they are not whole backups). Nothing else
    in ``root`` is touched."""
    check_keep(keep)
    whole: list[tuple[str, str, Path]] = []
    partial: list[Path] = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.is_symlink():
            continue
        if made is not None and path.resolve() == made.resolve():
            continue
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            made_at = str(manifest["made_at"])
            complete = manifest["format"] == FORMAT and bool(manifest["databases"])
        except (OSError, ValueError, KeyError, TypeError):
            complete = False
        if complete:
            whole.append((made_at, path.name, path))
        else:
            partial.append(path)
    whole.sort()
    others = keep - 1 if made is not None else keep
    removed = [path for _made_at, _name, path in whole[: max(0, len(whole) - others)]]
    for path in removed:
        shutil.rmtree(path)
    return removed, partial


def _server_version(topology: Topology) -> str:
    with connect(topology.admin_url(None, "postgres")) as connection:
        return str(scalar(connection, "SHOW server_version"))


# -- restore ------------------------------------------------------------------------------------
def read_backup(directory: Path) -> dict[str, DatabaseBackup]:
    """The manifest's databases, once every file it names is there with its size and sha256,
    and the databases are this release's."""
    entries = _manifest(directory)
    damaged = [why for entry in entries.values() for why in _damaged_files(directory, entry)]
    if damaged:  # every file, so that one pass puts them all right
        raise BackupError("; ".join(damaged))
    return entries


def _manifest(directory: Path) -> dict[str, DatabaseBackup]:
    """The manifest's databases, once it can be read and names this release's databases."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BackupError(
            f"{manifest_path} is missing: not a backup, or one that did not finish "
            "(`rose db backup` writes the manifest last)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise BackupError(
                f"{manifest_path}: format {manifest.get('format')!r}, this release reads {FORMAT}"
            )
        entries = {
            database: DatabaseBackup.from_json(database, entry)
            for database, entry in manifest["databases"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{manifest_path} cannot be read: {exc}") from None
    expected = {service_spec(name).database for name in SERVICES}
    if set(entries) != expected:
        raise BackupError(
            f"the backup holds {', '.join(sorted(entries))}; this release has "
            f"{', '.join(sorted(expected))}"
        )
    for entry in entries.values():
        if service_spec(entry.service).database != entry.database:
            raise BackupError(f"{manifest_path}: {entry.database} is not {entry.service}'s")
    return entries


def _damaged_files(directory: Path, entry: DatabaseBackup) -> list[str]:
    """The archives of ``entry`` missing, or not the files the backup wrote."""
    damaged = []
    for archive, _tables_in_it in entry.archives():
        path = directory / archive.file
        if path.name != archive.file or not path.is_file():
            damaged.append(f"{path} is missing")
        elif path.stat().st_size != archive.size or sha256_of(path) != archive.sha256:
            damaged.append(
                f"{path} is not the file the backup wrote (its size or sha256 differs): "
                "the backup is damaged"
            )
    return damaged


def _unknown_revisions(entry: DatabaseBackup) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(entry.service))
    unknown = []
    for revision in entry.revisions:
        try:
            script.get_revision(revision)
        except CommandError:
            unknown.append(revision)
    return unknown


def _database_exists(topology: Topology, service: str, servers: Connections) -> bool:
    return bool(
        scalar(
            servers.get(topology.maintenance_url(service)),
            "SELECT count(*) > 0 FROM pg_database WHERE datname = %s",
            (service_spec(service).database,),
        )
    )


def _checksums(topology: Topology, entry: DatabaseBackup) -> dict[str, Checksum]:
    """The backup's tables as the server holds them now (a table that is not there: 0 rows)."""
    found = {}
    with _session(topology, entry.service) as connection:
        for name in entry.tables:
            if scalar(connection, "SELECT to_regclass(%s) IS NULL", (name,)):
                found[name] = Checksum(method=entry.tables[name].method)
            else:
                found[name] = table_checksum(connection, name, entry.tables[name].method)
    return found


def _state(
    topology: Topology, entry: DatabaseBackup, servers: Connections
) -> tuple[str, str | None]:
    """("new" | "restored" | "split" | "refused", why) for one database before anything changes
    ("split": its own rows are restored, the split's schemas not yet)."""
    if not _database_exists(topology, entry.service, servers):
        return "new", None
    held = _checksums(topology, entry)
    if held == entry.tables and entry.rows:
        return "restored", None
    if entry.split is not None and all(
        held[name] == checksum if not in_split_schema(name) else not held[name].rows
        for name, checksum in entry.tables.items()
    ):
        return "split", None
    holding = [f"{name} {checksum.rows} rows" for name, checksum in held.items() if checksum.rows]
    if holding:
        return "refused", (
            f"{entry.database} already holds rows ({', '.join(holding[:3])}"
            f"{', ...' if len(holding) > 3 else ''}) that are not the backup's: restore onto a "
            "new server, or drop the database first"
        )
    with _session(topology, entry.service) as connection:
        current = _revisions(connection, service_spec(entry.service).name) or []
    script = ScriptDirectory.from_config(alembic_config(entry.service))
    if current and entry.revisions and current != entry.revisions:
        behind = {
            revision.revision
            for head in entry.revisions
            for revision in script.iterate_revisions(head, "base")
        }
        if not set(current) <= behind:
            return "refused", (
                f"{entry.database} is migrated to {', '.join(current)}, beyond the backup's "
                f"{', '.join(entry.revisions)}: restore onto a new server, or drop the database "
                "first"
            )
    return "new", None


# Each sequence of a service's schema: its quoted name, the next value it would hand out, and
# its step.
_SEQUENCES = (
    "SELECT format('%%I.%%I', schemaname, sequencename), "
    "coalesce(last_value + increment_by, start_value), increment_by "
    "FROM pg_sequences WHERE schemaname = %s"
)


def _sequences(topology: Topology, service: str) -> dict[str, int]:
    """The next value each sequence of the service's schema would hand out."""
    with _session(topology, service) as connection:
        rows = connection.execute(_SEQUENCES, (service_spec(service).name,)).fetchall()
    return {str(name): int(value) for name, value, _ in rows}


# How far past the backup's ids a restored database goes on. The ids handed out between the
# backup and the loss are unknown here, and outsiders keep them: SumUp holds a checkout under
# each order id's reference (a new order under a taken one is refused: a 502 per order until
# the ids pass them), a buyer's links and mails name orders. A million is more orders than a
# shop of this size makes between two nightly backups, and a bigint's room is 9e18.
RESTORED_IDS_GAP = 1_000_000


def _ids_past_the_backup(
    topology: Topology, service: str, before: dict[str, int], archive: Path
) -> None:
    """Each sequence goes on RESTORED_IDS_GAP past the backup's value (the archive's), and
    never below where it was (onto a database that had handed out more ids since): an id once
    handed out is never handed out again, as other services and SumUp may hold it. A sequence
    already that far on was moved by an earlier run cut off after it: left as it is, so that a
    run again moves each once (a run cut off between pg_restore's commit and this left the
    backup's values, and a run again found the rows restored and moved nothing)."""
    try:
        backed_up = sequence_values(archive)
    except subprocess.SubprocessError as exc:
        raise BackupError(f"pg_restore cannot list the sequences of {archive}: {exc}") from None
    with _session(topology, service) as connection:
        rows = connection.execute(_SEQUENCES, (service_spec(service).name,)).fetchall()
        for name, now, increment in rows:
            value, called = backed_up.get(str(name), (1, False))
            backup_next = value + increment if called else value
            if now >= backup_next + RESTORED_IDS_GAP:
                continue
            past = max(now, backup_next, before.get(str(name), now)) + RESTORED_IDS_GAP
            connection.execute("SELECT setval(%s, %s, false)", (name, past))


def _unreadable(directory: Path, entry: DatabaseBackup) -> str | None:
    """Why this release's pg_restore cannot restore an archive's rows (None: it can): an
    archive of a newer pg_dump, or one without a table's data."""
    for archive, tables in entry.archives():
        path = directory / archive.file
        missing, unreadable = tables_without_data(path, tables)
        if unreadable:
            return f"{path}: pg_restore cannot read it ({unreadable})"
        if missing:
            return f"{path}: pg_restore cannot read it: no rows of {', '.join(missing)} in it"
    return None


def check_backup(directory: Path) -> dict[str, DatabaseBackup]:
    """The backup's databases, once every file is the one the backup wrote, every revision is
    known to this release and this release's pg_restore reads every archive; raises
    BackupError naming every reason otherwise. Reads no server."""
    entries = _manifest(directory)
    refusals = [why for entry in entries.values() for why in _unrestorable(directory, entry)]
    if refusals:
        raise BackupError("; ".join(refusals))
    return entries


def _unrestorable(directory: Path, entry: DatabaseBackup) -> list[str]:
    """Why this release cannot restore ``entry`` from the backup (none: it can)."""
    damaged = _damaged_files(directory, entry)
    if damaged:
        return damaged
    refusals = []
    unknown = _unknown_revisions(entry)
    if unknown:
        refusals.append(
            f"{entry.database}: revision {', '.join(unknown)} is unknown to this release "
            "(a newer release made the backup): restore with that release"
        )
    unreadable = _unreadable(directory, entry)
    if unreadable:
        refusals.append(unreadable)
    return refusals


def restore(
    topology: Topology,
    credentials: Credentials,
    directory: Path,
    say: Say = print,
    *,
    dry_run: bool = False,
) -> Outcome:
    """Everything checked first (nothing changes if a check fails); with ``dry_run`` only that,
    and what it would do, a line per database."""
    # Every reason at once, so that one pass fixes them all: the backup's, and the server's
    # (a damaged archive hid a service still connected, and the rows of the other databases).
    entries = _manifest(directory)
    refusals = []
    restorable = {}
    for database, entry in entries.items():
        unrestorable = _unrestorable(directory, entry)
        refusals += unrestorable
        if not unrestorable:
            restorable[database] = entry
    # One connection per server for the checks (the databases may share one, or not).
    try:
        with Connections() as servers:
            connected = services_connected(topology, servers)
            states = {
                database: _state(topology, entry, servers) for database, entry in restorable.items()
            }
    except psycopg.Error:
        # A server that does not answer says nothing of the backup found wrong already.
        if refusals:
            raise BackupError("; ".join(refusals)) from None
        raise
    refusals += [why for state, why in states.values() if state == "refused" and why]
    if connected:
        refusals.insert(
            0,
            f"{'; '.join(connected)}: stop the services first (nothing may write during a restore)",
        )
    if refusals:
        raise BackupError("; ".join(refusals))

    outcome = Outcome()
    if dry_run:
        for database, entry in entries.items():
            at = ", ".join(entry.revisions) or "none"
            if states[database][0] == "restored":
                line = f"{database}: already restored ({_describe(entry)}), would leave it alone"
            elif states[database][0] == "split":
                line = (
                    f"{database}: its own rows already restored; would restore the split's schemas"
                )
            else:
                line = f"{database}: would restore {_describe(entry)} at revision {at}"
            outcome.lines.append(line)
            say(line)
        return outcome
    with converging_alone(topology, say):
        _restore_into(topology, credentials, directory, entries, states, outcome, say)
    return outcome


def _restore_into(
    topology: Topology,
    credentials: Credentials,
    directory: Path,
    entries: dict[str, DatabaseBackup],
    states: dict[str, tuple[str, str | None]],
    outcome: Outcome,
    say: Say,
) -> None:
    provision(topology, credentials, say=lambda _line: None)
    for database, entry in entries.items():
        archive = directory / entry.own.file
        if states[database][0] == "restored":
            # Its rows are the backup's; its ids may not have moved on yet (cut off before).
            _ids_past_the_backup(topology, entry.service, {}, archive)
            line = f"{database}: already restored ({_describe(entry)}, as the backup's), left alone"
            outcome.lines.append(line)
            say(line)
            continue
        if states[database][0] == "new":
            config = alembic_config(entry.service, topology.admin_url(entry.service))
            for revision in entry.revisions:
                command.upgrade(config, revision)
            before = _sequences(topology, entry.service)
            run_client_tool(
                [
                    str(pg_binary("pg_restore")),
                    "--data-only",
                    "--disable-triggers",
                    "--single-transaction",
                    "--exit-on-error",
                    str(archive),
                ],
                topology.admin_url(entry.service),
                f"pg_restore of {archive}",
            )
            _ids_past_the_backup(topology, entry.service, before, archive)
        else:
            # Its own rows restored by an earlier run (or none to restore): the ids still go on
            # past the backup's, once.
            _ids_past_the_backup(topology, entry.service, {}, archive)
        if entry.split is not None:
            # Whole schemas (not migrated: the split made them), their rows before their
            # triggers (the freeze's among them), as pg_restore orders an archive.
            run_client_tool(
                [
                    str(pg_binary("pg_restore")),
                    "--single-transaction",
                    "--exit-on-error",
                    str(directory / entry.split.file),
                ],
                topology.admin_url(entry.service),
                f"pg_restore of {directory / entry.split.file}",
            )
        held = _checksums(topology, entry)
        differing = [name for name, checksum in entry.tables.items() if held[name] != checksum]
        if differing:
            raise BackupError(
                f"{database}: the rows restored differ from the backup's in "
                f"{', '.join(differing)} (was something writing to the server?); they stay as "
                "restored: drop the database and run the restore again"
            )
        line = f"{database}: restored {_describe(entry)}, verified against the backup"
        outcome.lines.append(line)
        say(line)
    converged = converge_databases(topology, credentials, say=lambda _line: None)
    say(steps_line(converged.steps, "migrated to this release"))
    differences, notes = check(topology, credentials=credentials)
    outcome.notes.extend(notes)
    if differences:
        raise BackupError(
            "the rows are restored, but the cluster differs from db/: " + "; ".join(differences)
        )
