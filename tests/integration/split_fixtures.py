"""Helpers of the split's tests: the rose CLI in process, plain queries, and the cleanup that
leaves no legacy schema and no ledger behind for other tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from click.testing import Result
from typer.testing import CliRunner

from ops.cli import app as rose_cli
from ops.db.credentials import Credentials
from ops.split.moves import LEGACY_SERVICES, MOVES
from ops.split.seed import seed_legacy
from tests.conftest import admin_connect
from tests.pg import TestServer

runner = CliRunner()
# Scale 1: ~15,000 legacy rows, enough for every quirk.
SCALE = 1

# The status a legacy order gets in orders, and its payment attempt's (orders.sql, its header).
STATUS_MAPPING = {
    "pending": ("pending", "PENDING"),
    "paid": ("paid", "PAID"),
    "failed": ("pending", "FAILED"),
    # Open: the monolith's word, not SumUp's; orders asks SumUp (orders.sql, its header).
    "expired": ("pending", "PENDING"),
    "cancelled": ("cancelled", "PENDING"),
}


def rose_split(server: TestServer, *args: str) -> Result:
    return runner.invoke(rose_cli, ["split", *args, "--database-url", server.admin_url])


def rose_db_check(server: TestServer, credentials: Credentials) -> tuple[int, dict[str, Any]]:
    """``rose db check --json`` as the DBA runs it: the CLI, the superuser DSN, and the
    session's declared passwords (``ROSE_HOME``'s credentials.json), so passwords are compared
    too. Its exit code, and what it printed (ok, differences, notes)."""
    assert credentials.path is not None
    result = runner.invoke(
        rose_cli,
        ["db", "check", "--json"],
        env={
            "ROSE_HOME": str(credentials.path.parent),
            "ROSE_ENV": "dev",
            "ROSE_ADMIN_URL": server.admin_url,
        },
    )
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def rows(server: TestServer, service: str, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with admin_connect(server, service) as connection:
        return connection.execute(query, params).fetchall()


def value(server: TestServer, service: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    return rows(server, service, query, params)[0][0]


def drop_split_state(server: TestServer) -> None:
    """Drop schema legacy (its freeze triggers with it) and finalize's records in the source
    databases and the split schema (the ledger) in the targets. The ``clean_db`` fixture empties
    the target tables."""
    for service in LEGACY_SERVICES:
        with admin_connect(server, service) as connection:
            connection.execute("DROP SCHEMA IF EXISTS legacy CASCADE")
            connection.execute("DROP SCHEMA IF EXISTS split CASCADE")
    for service in dict.fromkeys(move.target for move in MOVES):
        with admin_connect(server, service) as connection:
            connection.execute("DROP SCHEMA IF EXISTS split CASCADE")


def ledger(server: TestServer, move: str) -> dict[str, Any] | None:
    target = next(candidate for candidate in MOVES if candidate.name == move).target
    with admin_connect(server, target) as connection:
        if not connection.execute("SELECT to_regclass('split.ledger') IS NOT NULL").fetchone()[0]:
            return None
        cursor = connection.execute("SELECT * FROM split.ledger WHERE move = %s", (move,))
        found = cursor.fetchone()
        if found is None:
            return None
        return dict(zip([column.name for column in cursor.description], found, strict=True))


def listed_ids(entry: dict[str, Any], outcome: str, reason: str, table: str) -> list[int]:
    return entry["reasons"].get(outcome, {}).get(reason, {}).get("rows", {}).get(table, [])


def target_counts(server: TestServer) -> dict[str, int]:
    counts = {}
    for move in MOVES:
        for table in move.target_tables:
            counts[table] = value(server, move.target, f"SELECT count(*) FROM {table}")
    return counts


def seeded_monolith(clean_db: TestServer) -> Iterator[TestServer]:
    """For the test modules' ``monolith`` fixture: empty targets and a freshly seeded legacy
    monolith; afterwards no legacy schema and no ledger are left (clean_db empties the target
    tables)."""
    drop_split_state(clean_db)
    try:
        seed_legacy(clean_db.topology, SCALE, replace=False, say=lambda _: None)
        yield clean_db
    finally:
        drop_split_state(clean_db)


@contextmanager
def service_sessions(
    server: TestServer, credentials: Credentials, service: str, count: int
) -> Iterator[None]:
    """``count`` sessions of ``service``'s own login role in its database: the service running."""
    with ExitStack() as sessions:
        for _ in range(count):
            sessions.enter_context(psycopg.connect(server.topology.app_url(service, credentials)))
        yield


def freeze_triggers(server: TestServer) -> list[str]:
    """The freeze triggers on the monolith's tables ("<service>.<table>.<trigger>")."""
    found = []
    for service in LEGACY_SERVICES:
        found += [
            f"{service}.{table}.{trigger}"
            for table, trigger in rows(
                server,
                service,
                "SELECT c.relname, t.tgname FROM pg_trigger AS t "
                "JOIN pg_class AS c ON c.oid = t.tgrelid WHERE t.tgname LIKE 'split_freeze_%%'",
            )
        ]
    return found
