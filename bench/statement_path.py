"""Benchmark: the client CPU of one statement through each path the services have.

    python -m bench.statement_path [--statements 5000] [--rounds 3]

On an embedded PostgreSQL of its own, in one transaction of one session, the same prepared
statement (a SELECT of one row by key) runs ``--statements`` times through:

- psycopg alone: a cursor on the session's own connection (the baseline, the floor);
- ``session.execute``: SQLAlchemy's whole execution path, as the ORM session runs Core;
- ``DirectStatement``: apps.common.direct, the hot paths' way.

Rounds alternate the paths, so that a noisy machine hits them alike. It prints the client CPU
per statement of each path (median of the rounds) and its ratio to psycopg alone.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, bindparam, select, text

from apps.common.db import create_engine, sessionmaker_for
from apps.common.direct import DirectStatement
from ops.stack.pgserver import LocalPostgres, free_port

ROWS = 1000
metadata = MetaData(schema="bench")
items = Table(
    "items",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("title", Text, nullable=False),
)
BY_ID = select(items.c.id, items.c.title).where(items.c.id == bindparam("item_id"))


async def measure(url: str, statements: int, rounds: int) -> dict[str, list[float]]:
    engine = create_engine(url, application_name="bench-statement-path", pool_size=1)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE SCHEMA IF NOT EXISTS bench"))
        await connection.run_sync(metadata.create_all)
        await connection.execute(
            text(
                f"INSERT INTO bench.items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g"
            )
        )
    direct = DirectStatement(BY_ID)
    per_statement: dict[str, list[float]] = {
        "psycopg alone": [],
        "session.execute": [],
        "DirectStatement": [],
    }
    async with sessionmaker_for(engine)() as session:
        held = (await session.connection()).sync_connection
        assert held is not None
        driver = held.connection.driver_connection

        async def psycopg_alone(item_id: int) -> None:
            async with driver.cursor() as cursor:  # type: ignore[union-attr]
                await cursor.execute(direct.sql, {"item_id": item_id})
                await cursor.fetchall()

        async def via_session(item_id: int) -> None:
            (await session.execute(BY_ID, {"item_id": item_id})).all()

        async def via_direct(item_id: int) -> None:
            await direct.rows(session, {"item_id": item_id})

        paths: dict[str, Callable[[int], Awaitable[None]]] = {
            "psycopg alone": psycopg_alone,
            "session.execute": via_session,
            "DirectStatement": via_direct,
        }
        for run in paths.values():  # warm up: every path prepared and cached
            for item_id in range(1, 20):
                await run(item_id)
        for _ in range(rounds):
            for name, run in paths.items():
                started = time.process_time()
                for index in range(statements):
                    await run(index % ROWS + 1)
                per_statement[name].append((time.process_time() - started) / statements * 1e6)
        await session.rollback()
    await engine.dispose()
    return per_statement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rose-bench-") as scratch:
        server = LocalPostgres(
            Path(scratch) / "data", free_port(), secrets.token_urlsafe(16), fast_unsafe=True
        )
        server.start()
        try:
            results = uvloop.run(measure(server.superuser_url(), args.statements, args.rounds))
        finally:
            server.destroy()
    baseline = statistics.median(results["psycopg alone"])
    print(f"client CPU per statement, {args.statements} statements x {args.rounds} rounds")
    print(f"{'path':20} {'median us':>10} {'rounds':>24} {'ratio':>7}")
    for name, values in results.items():
        middle = statistics.median(values)
        rounds = " ".join(f"{value:6.1f}" for value in values)
        print(f"{name:20} {middle:10.1f} {rounds:>24} {middle / baseline:7.2f}")


if __name__ == "__main__":
    main()
