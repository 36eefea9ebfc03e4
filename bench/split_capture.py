"""Benchmark: what change capture costs the monolith's writes, trigger change tables (what
`rose split sync` uses, db/split/capture.sql) against logical replication (a publication and a
pgoutput slot), on one throwaway embedded PostgreSQL 18 with ``wal_level=logical``.

Single-row INSERT transactions into ``legacy.product_likes`` of db/legacy/market.sql (the
busiest table the split moves), ``--writes`` per measurement, alternating the three set-ups
``--rounds`` times: no capture, the capture trigger, a publication with a logical slot (then
the time to decode the slot's changes, which a subscriber would pay).
``python -m bench.split_capture``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import psycopg

from ops.split.common import execute_sql, run_file
from ops.split.moves import LEGACY_DIR, SPLIT_DIR
from ops.stack.pgserver import throwaway_postgres


def writes_per_second(connection: psycopg.Connection[Any], count: int) -> float:
    started = time.perf_counter()
    for number in range(count):
        connection.execute(
            "INSERT INTO legacy.product_likes (user_id, product_id) VALUES (%s, %s)",
            (number % 500, number % 97),
        )
    return count / (time.perf_counter() - started)


def with_trigger(connection: psycopg.Connection[Any], on: bool) -> None:
    name = "capture.sql" if on else "uncapture.sql"
    with connection.transaction():
        execute_sql(
            connection,
            (SPLIT_DIR / name).read_text(),
            {
                "owner": "postgres",
                "move": "likes",
                "table": "product_likes",
                "key_new": "jsonb_build_array(NEW.user_id, NEW.product_id)",
                "key_old": "jsonb_build_array(OLD.user_id, OLD.product_id)",
                "update_when": "to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW)",
                "lock_timeout": "10s",
            },
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = {"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}
    results: dict[str, list[float]] = {"none": [], "trigger": [], "logical": []}
    decode: list[float] = []
    with (
        throwaway_postgres(prefix="rose-bench-capture-pg-", extra_settings=settings) as pg,
        psycopg.connect(pg.superuser_url(), autocommit=True) as connection,
    ):
        run_file(connection, LEGACY_DIR / "market.sql", {"owner": "postgres"})
        for number in range(1, args.rounds + 1):
            for setup in ("none", "trigger", "logical"):
                if setup == "trigger":
                    with_trigger(connection, True)
                if setup == "logical":
                    connection.execute("CREATE PUBLICATION bench FOR TABLE legacy.product_likes")
                    connection.execute(
                        "SELECT pg_create_logical_replication_slot('bench', 'pgoutput')"
                    )
                rate = writes_per_second(connection, args.writes)
                results[setup].append(rate)
                line = f"round {number}: {setup:<8} {rate:8,.0f} writes/s"
                if setup == "trigger":
                    with_trigger(connection, False)
                if setup == "logical":
                    started = time.perf_counter()
                    changes = connection.execute(
                        "SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench', NULL, "
                        "NULL, 'proto_version', '4', 'publication_names', 'bench')"
                    ).fetchone()
                    decode.append(time.perf_counter() - started)
                    messages = changes[0] if changes else 0
                    line += f"; decoding the slot: {decode[-1]:.2f} s ({messages:,} messages)"
                    connection.execute("SELECT pg_drop_replication_slot('bench')")
                    connection.execute("DROP PUBLICATION bench")
                print(line, flush=True)
    base = statistics.median(results["none"])
    for setup, rates in results.items():
        rate = statistics.median(rates)
        print(f"median {setup:<8} {rate:8,.0f} writes/s ({rate / base:.2f} of no capture)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
