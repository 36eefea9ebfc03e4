"""What every step of ``rose split`` shares: connections with fixed session settings, the SQL
files of ``db/split`` (with their classify/apply parts), the ledger, and the fault
injection that tests use to crash a run at a chosen point."""

from __future__ import annotations

import contextvars
import getpass
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row

from apps.registry import service_spec
from ops.db.connections import Connections, scalar, services_connected
from ops.db.sqlfiles import parse
from ops.db.topology import Topology
from ops.split.moves import SPLIT_DIR, Move

Say = Callable[[str], None]

# Checksums hash the text form of rows, and the text of timestamptz, dates, intervals and floats
# depends on these settings: both sides of a comparison use the same ones.
FIXED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
)

# Moves run (and verified) at the same time: the cores, at most 4.
DEFAULT_JOBS = min(4, os.cpu_count() or 2)

CRASH_ENV = "ROSE_SPLIT_CRASH"
CRASH_EXIT_CODE = 86
# Points of `run` (per move), of `finalize` and of `abort` (as finalize:<point>, abort:<point>).
CRASH_POINTS = ("after-freeze", "after-copy", "after-transform", "before-commit")
FINALIZE_CRASH_POINTS = ("after-backup", "after-lock", "after-drop", "between-commits")
ABORT_CRASH_POINTS = ("after-target", "after-unfreeze")
FaultHook = Callable[[str, str], None]

_SECTION_MARKER = re.compile(r"^-- split:(classify|apply)\b.*$", re.MULTILINE)


class SplitError(Exception):
    """A refusal or a failed check, with a message for the operator."""


class ServicesConnected(SplitError):
    """A step that writes the targets refused while their services run: which logins are
    connected where (a line each), and what to do."""

    def __init__(self, command: str, connected: list[str], advice: str) -> None:
        self.command = command
        self.connected = connected
        self.advice = advice
        super().__init__(
            f"{command} refused: the services are running ({'; '.join(connected)}): {advice}"
        )

    def lines(self) -> list[str]:
        return [
            f"{self.command} refused: the services are running (their own logins are "
            "connected to the databases it would write):",
            *(f"  {line}" for line in self.connected),
            self.advice,
        ]


def refuse_while_services_run(
    topology: Topology, moves: Iterable[Move], command: str, advice: str
) -> None:
    """Raise ServicesConnected when a service's own login is connected to the target database
    of one of ``moves``; reads only (pg_stat_activity), so nothing is changed when it refuses."""
    targets = list(dict.fromkeys(move.target for move in moves))
    if not targets:
        return
    with Connections() as servers:
        connected = services_connected(topology, servers, targets)
    if connected:
        raise ServicesConnected(command, connected, advice)


# Sent with every connection: the fixed settings; a server that notices a dead client within a
# second even in the middle of a statement (a lock wait included), so the work of a killed
# `rose split` dies with it instead of going on alone; and memory for a move's sorts, hashes,
# temporary tables (staged rows: the default 8MB spills them to disk) and index builds.
SESSION_OPTIONS = " ".join(
    [f"-c {name}={value.replace(' ', '')}" for name, value in FIXED_SETTINGS]
    + [
        "-c client_connection_check_interval=1000",
        "-c work_mem=64MB",
        "-c temp_buffers=256MB",
        "-c maintenance_work_mem=256MB",
    ]
)


def connect(topology: Topology, service: str) -> psycopg.Connection[Any]:
    """A superuser connection to ``service``'s database, autocommit, with the fixed settings."""
    return psycopg.connect(
        topology.admin_url(service),
        autocommit=True,
        connect_timeout=10,
        application_name="rose split",
        options=SESSION_OPTIONS,
        # No server-side prepared statements: a reused session is reset with DISCARD ALL, and
        # the split's statements run a few times each.
        prepare_threshold=None,
    )


class _SessionPool:
    """Idle connections of one command, per database URL, for the next user of the same one."""

    def __init__(self) -> None:
        self._idle: dict[str, list[psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()

    def take(self, url: str) -> psycopg.Connection[Any] | None:
        with self._lock:
            idle = self._idle.get(url)
            return idle.pop() if idle else None

    def add(self, url: str, connection: psycopg.Connection[Any]) -> None:
        """A connection just opened by :func:`connect`."""
        with self._lock:
            self._idle.setdefault(url, []).append(connection)

    def holds(self, url: str) -> bool:
        with self._lock:
            return bool(self._idle.get(url))

    def give_back(self, url: str, connection: psycopg.Connection[Any]) -> None:
        """Keep ``connection`` reset to how :func:`connect` opened it, or close it."""
        if connection.closed or connection.info.transaction_status != pq.TransactionStatus.IDLE:
            connection.close()
            return
        try:
            connection.isolation_level = None
            connection.read_only = None
            # Temporary tables and views, SET values, roles, advisory locks.
            connection.execute("DISCARD ALL")
        except psycopg.Error:
            connection.close()
            return
        with self._lock:
            self._idle.setdefault(url, []).append(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


_SESSIONS: contextvars.ContextVar[_SessionPool | None] = contextvars.ContextVar(
    "rose_split_sessions", default=None
)


@contextmanager
def reused_sessions() -> Iterator[None]:
    """Within this block (and the threads started with :func:`submit_in_context`),
    :func:`session` hands out connections again instead of opening new ones: opening one costs
    ~9 ms (a backend and SCRAM authentication), and a run of every move opened ~40."""
    if _SESSIONS.get() is not None:
        yield
        return
    pool = _SessionPool()
    token = _SESSIONS.set(pool)
    try:
        yield
    finally:
        _SESSIONS.reset(token)
        pool.close()


@contextmanager
def session(topology: Topology, service: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection as :func:`connect` opens it, reused within :func:`reused_sessions`. One that
    leaves with an error, or inside a transaction, is closed rather than reused."""
    pool = _SESSIONS.get()
    if pool is None:
        with connect(topology, service) as connection:
            yield connection
        return
    url = topology.admin_url(service)
    connection = pool.take(url) or connect(topology, service)
    try:
        yield connection
    except BaseException:
        connection.close()
        raise
    pool.give_back(url, connection)


def databases_of(moves: Iterable[Move]) -> list[str]:
    """The services whose databases ``moves`` read or write."""
    return list(
        dict.fromkeys(name for move in moves for name in (move.target, *move.source_services))
    )


def open_sessions(topology: Topology, services: Iterable[str]) -> None:
    """Within :func:`reused_sessions`, open one connection to each of ``services``' databases
    at the same time, for the first sessions to take: opened one by one as the steps come to
    them, a command waited ~4 ms for each backend and its authentication in turn."""
    pool = _SESSIONS.get()
    if pool is None:
        return
    wanted = [
        service
        for service in dict.fromkeys(services)
        if not pool.holds(topology.admin_url(service))
    ]
    if not wanted:
        return
    with ThreadPoolExecutor(max_workers=len(wanted)) as opening:
        opened = {service: opening.submit(connect, topology, service) for service in wanted}
    failures = []
    for service, future in opened.items():
        try:
            pool.add(topology.admin_url(service), future.result())
        except psycopg.Error as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def submit_in_context(executor: Executor, function: Callable[..., Any], *args: Any) -> Future[Any]:
    """``executor.submit`` in a copy of this thread's context (its session pool)."""
    return executor.submit(contextvars.copy_context().run, function, *args)


def operator() -> str:
    """Who runs this `rose split`, for the ledger: "<os user>@<host>"."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def execute_sql(
    connection: psycopg.Connection[Any], text: str, variables: Mapping[str, str] | None = None
) -> None:
    """Run psql-style SQL text (see :mod:`ops.db.sqlfiles`) on ``connection``, in whatever
    transaction it is in."""
    for statement in parse(text, variables or {}):
        cursor = connection.execute(statement.sql)
        if statement.gexec:
            for row in cursor.fetchall():
                for generated in row:
                    if generated is not None:
                        connection.execute(generated)


def run_file(
    connection: psycopg.Connection[Any], path: Path, variables: Mapping[str, str] | None = None
) -> None:
    execute_sql(connection, path.read_text(), variables)


@dataclass(frozen=True)
class TransformParts:
    """A move's SQL file cut at its ``-- split:classify`` and ``-- split:apply`` lines."""

    setup: str
    classify: str
    apply: str


def transform_parts(path: Path) -> TransformParts:
    text = path.read_text()
    markers = list(_SECTION_MARKER.finditer(text))
    names = [marker.group(1) for marker in markers]
    if names != ["classify", "apply"]:
        raise SplitError(
            f"{path}: expected one '-- split:classify' line, then one '-- split:apply' line"
        )
    classify, apply = markers
    return TransformParts(
        setup=text[: classify.start()],
        classify=text[classify.end() : apply.start()],
        apply=text[apply.end() :],
    )


def crash_from_environment(move: str, point: str) -> None:
    """Die at once, like a killed process, when ``ROSE_SPLIT_CRASH`` names this move and point
    (``likes:after-copy``). Nothing is cleaned up: the server sees the connection drop."""
    if os.environ.get(CRASH_ENV) == f"{move}:{point}":
        print(f"{move}: crashing {point} ({CRASH_ENV})", flush=True)
        os._exit(CRASH_EXIT_CODE)


# -- the ledger ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerEntry:
    move: str
    runs: int
    started_at: datetime | None
    finished_at: datetime | None
    seconds: Decimal | None
    source_rows: int | None
    moved_rows: int | None
    collapsed_rows: int | None
    skipped_rows: int | None
    reasons: dict[str, Any] | None
    inserted: dict[str, int] | None
    checksum: str | None
    verified_at: datetime | None
    verification: dict[str, Any] | None
    finalized_at: datetime | None
    run_by: str | None = None
    verified_by: str | None = None
    finalized_by: str | None = None
    checksums: dict[str, Any] | None = None
    inserted_ids: dict[str, str] | None = None
    finalizing_at: datetime | None = None
    backups: dict[str, Any] | None = None
    aborted_at: datetime | None = None
    aborted_by: str | None = None
    sync_started_at: datetime | None = None
    snapshot_at: datetime | None = None
    write_pause: Decimal | None = None
    sync_definitions: dict[str, int] | None = None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def finalizing(self) -> bool:
        return self.finalizing_at is not None and self.finalized_at is None

    @property
    def aborted(self) -> bool:
        """Aborted, and not started again since (a run after an abort that crashed is that
        run's: started, not finished)."""
        return (
            self.aborted_at is not None
            and not self.done
            and (self.started_at is None or self.started_at <= self.aborted_at)
        )

    @property
    def syncing(self) -> bool:
        """Being synced online: `rose split cutover` finishes it (`run` refuses)."""
        return not self.done and self.sync_started_at is not None

    @property
    def cut_over_unrecorded(self) -> bool:
        """A cutover ended the write pause and died before recording the move (its ids and
        checksums): the next cutover records and verifies it."""
        return self.done and self.sync_started_at is not None and not self.checksums

    def unrecorded_cutover(self) -> str:
        return (
            f"cut over at {_when(self.finished_at)}, but its cutover stopped before recording "
            f"it: `rose split cutover --move {self.move}` records and verifies it"
        )

    def state(self) -> str:
        if self.cut_over_unrecorded:
            return self.unrecorded_cutover()
        if self.syncing:
            if self.snapshot_at is None:
                return (
                    f"syncing online since {_when(self.sync_started_at)}: capturing, snapshot "
                    f"not committed (`rose split sync --move {self.move}` resumes)"
                )
            return (
                f"syncing online since {_when(self.sync_started_at)} (snapshot committed at "
                f"{_when(self.snapshot_at)}): `rose split cutover --move {self.move}` finishes "
                "it; `run` does not"
            )
        if self.finalized_at is not None:
            return f"finalized at {_when(self.finalized_at)}"
        if self.finalizing:
            return (
                f"moved; finalize started at {_when(self.finalizing_at)} and did not confirm "
                "(`rose split status` tells what it dropped; finalize completes it)"
            )
        if self.aborted:
            return f"aborted at {_when(self.aborted_at)}: nothing of it in the target"
        if self.verified_at is not None:
            return f"moved at {_when(self.finished_at)}, verified at {_when(self.verified_at)}"
        if self.finished_at is not None:
            if self.verification and not self.verification.get("ok", False):
                return f"moved at {_when(self.finished_at)}; the last verify found differences"
            return f"moved at {_when(self.finished_at)}, not verified"
        return (
            f"started at {_when(self.started_at)} and not finished ({self.runs} run(s); "
            "crashed, failed or still running): nothing of it is in the target until it "
            "commits; run starts it again"
        )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else "?"


# The schema of the ledgers (in the targets) and of finalize's records (in the sources).
SPLIT_SCHEMA = "split"
LEDGER_FILE = SPLIT_DIR / "ledger.sql"


def ensure_ledger(connection: psycopg.Connection[Any], target: str) -> None:
    """The ledger's schema as ledger.sql makes it; skipped while the ledger's comment names this
    version of the file (its ~20 statements lock the ledger)."""
    text = LEDGER_FILE.read_text()
    version = f"ledger.sql {hashlib.sha256(text.encode()).hexdigest()[:16]}"
    made_by = scalar(connection, "SELECT obj_description(to_regclass('split.ledger'), 'pg_class')")
    if made_by == version:
        return
    execute_sql(connection, text, {"owner": service_spec(target).owner_role, "version": version})


def ensure_dropped_record(connection: psycopg.Connection[Any], service: str) -> None:
    run_file(connection, SPLIT_DIR / "dropped.sql", {"owner": service_spec(service).owner_role})


def dropped_records(connection: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """The tables finalize dropped in this database (split.dropped), by table name."""
    if not table_exists(connection, "split.dropped"):
        return {}
    with connection.cursor(row_factory=dict_row) as cursor:
        return {
            row["source_table"]: row
            for row in cursor.execute("SELECT * FROM split.dropped ORDER BY source_table")
        }


def ledger_exists(connection: psycopg.Connection[Any]) -> bool:
    return bool(scalar(connection, "SELECT to_regclass('split.ledger') IS NOT NULL"))


def read_ledger(
    connection: psycopg.Connection[Any], move: str, *, lock: bool = False
) -> LedgerEntry | None:
    if not ledger_exists(connection):
        return None
    query = "SELECT * FROM split.ledger WHERE move = %s" + (" FOR UPDATE" if lock else "")
    with connection.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(query, (move,)).fetchone()
    return LedgerEntry(**row) if row else None


def ledger_of(topology: Topology, move: Move) -> LedgerEntry | None:
    with session(topology, move.target) as connection:
        return read_ledger(connection, move.name)


def mark_started(connection: psycopg.Connection[Any], move: str) -> None:
    """Committed on its own, before the move's transaction: a run that dies leaves this trace.
    A move aborted earlier starts afresh (its abort stays recorded until it finishes)."""
    connection.execute(
        """
        INSERT INTO split.ledger (move, runs, started_at, run_by)
        VALUES (%s, 1, clock_timestamp(), %s)
        ON CONFLICT (move) DO UPDATE
            SET runs = split.ledger.runs + 1, started_at = excluded.started_at,
                run_by = excluded.run_by
            WHERE split.ledger.finished_at IS NULL
        """,
        (move, operator()),
    )


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def table_exists(connection: psycopg.Connection[Any], qualified_name: str) -> bool:
    return bool(scalar(connection, "SELECT to_regclass(%s) IS NOT NULL", (qualified_name,)))


def count_rows(connection: psycopg.Connection[Any], qualified_name: str) -> int:
    schema, table = qualified_name.split(".")
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    return int(scalar(connection, query))
