"""The freeze of the split's source tables: taken by ``run`` (one transaction per source
database, so a table is frozen for every move or for none), lifted by ``abort`` and, for the
tables the split keeps, by ``finalize``. What is frozen is always read from the catalog (the
triggers), never assumed: messages say what is frozen now."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from apps.registry import service_spec
from ops.db.topology import Topology
from ops.split.common import Say, SplitError, execute_sql, session
from ops.split.moves import LEGACY_SERVICES, SPLIT_DIR, Move

TRIGGER_PREFIX = "split_freeze_"


def frozen_in(connection: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """The frozen legacy tables of this database and the moves that froze each."""
    frozen: dict[str, list[str]] = {}
    for table, trigger in connection.execute(
        """
        SELECT c.relname, t.tgname
        FROM pg_trigger AS t
        JOIN pg_class AS c ON c.oid = t.tgrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'legacy' AND t.tgname LIKE 'split\\_freeze\\_%%'
        ORDER BY 1, 2
        """
    ):
        frozen.setdefault(table, []).append(trigger.removeprefix(TRIGGER_PREFIX))
    return frozen


def frozen_now(topology: Topology, services: Iterable[str] = LEGACY_SERVICES) -> list[str]:
    """Every frozen legacy table, as "db_x legacy.t (moves)", read from the catalogs."""
    lines = []
    for service in services:
        with session(topology, service) as connection:
            for table, moves in frozen_in(connection).items():
                lines.append(
                    f"{service_spec(service).database} legacy.{table} ({', '.join(moves)})"
                )
    return lines


def describe_frozen(topology: Topology, services: Iterable[str]) -> str:
    try:
        lines = frozen_now(topology, services)
    except psycopg.Error as exc:
        return f"what is frozen could not be read ({exc})"
    return "frozen now: " + ("; ".join(lines) if lines else "nothing")


FREEZE_LOCK_TIMEOUT = 10.0


def freeze(
    topology: Topology, moves: list[Move], say: Say, lock_timeout: float = FREEZE_LOCK_TIMEOUT
) -> None:
    """Freeze every source table of ``moves``: per source database, one transaction for all of
    them. A failure (a lock timeout) freezes nothing more in that database; the error says what
    is frozen now."""
    services = list(dict.fromkeys(service for move in moves for service in move.source_services))
    for service in services:
        spec = service_spec(service)
        try:
            with session(topology, service) as source, source.transaction():
                for move in moves:
                    tables = [table.table for table in move.sources_in(service)]
                    if not tables:
                        continue
                    execute_sql(
                        source,
                        (SPLIT_DIR / "freeze.sql").read_text(),
                        {
                            "owner": spec.owner_role,
                            "move": move.name,
                            "tables": ",".join(tables),
                            "lock_timeout": f"{int(lock_timeout * 1000)}ms",
                        },
                    )
        except psycopg.Error as exc:
            raise SplitError(
                f"could not freeze the sources in {spec.database}: {exc}".rstrip()
                + f"; nothing more was frozen there. {describe_frozen(topology, services)}"
            ) from exc
        for move in moves:
            listed = ", ".join(f"legacy.{table.table}" for table in move.sources_in(service))
            if listed:
                say(f"{move.name}: froze {spec.database} {listed}")


def unfreeze(topology: Topology, moves: list[str], tables: dict[str, list[str]], say: Say) -> None:
    """Drop the freeze triggers of ``moves`` from ``tables`` ({service: [table]}), one
    transaction per database."""
    for service, names in tables.items():
        if not names:
            continue
        spec = service_spec(service)
        with session(topology, service) as source, source.transaction():
            before = frozen_in(source)
            execute_sql(
                source,
                (SPLIT_DIR / "unfreeze.sql").read_text(),
                {"owner": spec.owner_role, "moves": ",".join(moves), "tables": ",".join(names)},
            )
            after = frozen_in(source)
        for table in names:
            lifted = [move for move in before.get(table, []) if move not in after.get(table, [])]
            if lifted:
                still = after.get(table)
                rest = f"; still frozen by {', '.join(still)}" if still else "; writable again"
                say(f"unfroze {spec.database} legacy.{table} ({', '.join(lifted)}){rest}")
