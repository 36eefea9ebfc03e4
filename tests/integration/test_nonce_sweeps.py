"""The sweep of expired nonces (apps.common.nonces): bounded, oldest first, only what can no
longer be presented, and never waiting on another sweep. On likes' own table, as its app role
(the role every sweep runs as)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.common import nonces
from apps.common.db import create_engine
from apps.likes.models import request_nonces
from tests.conftest import admin_connect

EXPIRED = 12
FRESH = 3


@pytest.fixture
async def likes_engine(clean_db, credentials) -> AsyncIterator[AsyncEngine]:
    url = clean_db.topology.app_url("likes", credentials)
    engine = create_engine(url, application_name="nonce-sweep-test")
    try:
        yield engine
    finally:
        await engine.dispose()


def add_nonces(server) -> None:
    """EXPIRED nonces, expired-00 the oldest (written newest first, so that the table's order
    is not their age's), and FRESH ones that may still be presented."""
    with admin_connect(server, "likes") as admin:
        admin.execute(
            "INSERT INTO likes.request_nonces (nonce, expires_at) "
            "SELECT 'expired-' || lpad(n::text, 2, '0'), now() - interval '1 hour' + n * "
            "interval '1 second' FROM generate_series(%s, 0, -1) AS n",
            (EXPIRED - 1,),
        )
        admin.execute(
            "INSERT INTO likes.request_nonces (nonce, expires_at) "
            "SELECT 'fresh-' || n, now() + interval '1 hour' FROM generate_series(1, %s) AS n",
            (FRESH,),
        )


def left(server) -> list[str]:
    with admin_connect(server, "likes") as admin:
        found = admin.execute("SELECT nonce FROM likes.request_nonces ORDER BY nonce").fetchall()
    return [row[0] for row in found]


def expired(numbers: range) -> list[str]:
    return [f"expired-{n:02d}" for n in numbers]


FRESH_NONCES = [f"fresh-{n}" for n in range(1, FRESH + 1)]


async def sweep(store: nonces.NonceStore, engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        # A hang guard, not a timing: a sweep that waited on another's rows never returns.
        await asyncio.wait_for(store._sweep_on(connection), 30)


async def test_a_sweep_deletes_at_most_its_batch_oldest_first(
    clean_db, likes_engine, monkeypatch
) -> None:
    """A backlog goes in bounded steps (SWEEP_BATCH rows a sweep, 5 here), the oldest first,
    and a nonce that may still be presented is never deleted."""
    monkeypatch.setattr(nonces, "SWEEP_BATCH", 5)
    store = nonces.NonceStore(request_nonces)  # the statement takes the batch when it is built
    add_nonces(clean_db)
    await sweep(store, likes_engine)
    assert left(clean_db) == expired(range(5, EXPIRED)) + FRESH_NONCES
    await sweep(store, likes_engine)
    assert left(clean_db) == expired(range(10, EXPIRED)) + FRESH_NONCES
    await sweep(store, likes_engine)
    assert left(clean_db) == FRESH_NONCES
    await sweep(store, likes_engine)
    assert left(clean_db) == FRESH_NONCES


async def test_a_sweep_skips_the_rows_another_sweep_holds(clean_db, likes_engine) -> None:
    """Two sweeps of one backlog neither wait on nor deadlock with each other: the second
    deletes what the first does not hold, and the first's rows are the first's to delete."""
    store = nonces.NonceStore(request_nonces)
    add_nonces(clean_db)
    with admin_connect(clean_db, "likes") as holder:
        holder.execute("BEGIN")
        holder.execute(
            "SELECT nonce FROM likes.request_nonces WHERE nonce = ANY(%s) FOR UPDATE",
            (expired(range(3)),),
        )
        await sweep(store, likes_engine)  # it would wait on the held rows without SKIP LOCKED
        assert left(clean_db) == expired(range(3)) + FRESH_NONCES
        holder.execute("ROLLBACK")
    await sweep(store, likes_engine)
    assert left(clean_db) == FRESH_NONCES
