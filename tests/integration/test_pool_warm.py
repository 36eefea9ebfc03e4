"""A service opens its pool at start-up: every connection, and each one's postgres_fdw
connection to every foreign server its role reads. A burst right after a start (a deploy)
otherwise paid a login per pool connection and another per foreign server on the connection's
first foreign read (bench/README.md, "eleventh pass")."""

from __future__ import annotations

import logging

import psycopg

from tests.conftest import in_process_stack


def _backends(admin_url: str, database: str, role: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s",
            (database, role),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_service_starts_with_its_pool_and_its_foreign_connections_open(
    clean_db, credentials
):
    admin = clean_db.topology.admin_url()
    # market reads likes' export view through postgres_fdw as likes_ro_market.
    overrides = {"market": {"database_pool_size": 3, "database_pool_warm": True}}
    before = _backends(admin, "db_likes", "likes_ro_market")
    async with in_process_stack(
        clean_db, credentials, ["market"], settings_overrides=overrides
    ) as running:
        pool = running.apps["market"].state.platform.engine.sync_engine.pool
        # Opened, idle or in use: the outbox relay market starts may hold one already.
        open_in_pool = pool.checkedin() + pool.checkedout()
        own = _backends(admin, "db_market", "market_app")
        foreign = _backends(admin, "db_likes", "likes_ro_market") - before
    assert open_in_pool == 3
    assert own == 3
    assert foreign == 3


async def test_warming_is_off_when_the_setting_says_so(clean_db, credentials):
    overrides = {"market": {"database_pool_size": 3, "database_pool_warm": False}}
    async with in_process_stack(
        clean_db, credentials, ["market"], settings_overrides=overrides
    ) as running:
        pool = running.apps["market"].state.platform.engine.sync_engine.pool
        assert pool.checkedin() == 0


async def test_a_database_that_is_down_at_start_up_does_not_stop_the_service_starting(
    clean_db, credentials, caplog
):
    """Readiness says what is wrong (503); the pool opens connections on demand, as before."""
    unreachable = "postgresql://relations_app:nothing@127.0.0.1:1/db_relations"
    overrides = {"relations": {"database_url": unreachable, "database_pool_warm": True}}
    with caplog.at_level(logging.WARNING, logger="rose.db"):
        async with in_process_stack(
            clean_db, credentials, ["relations"], settings_overrides=overrides
        ) as running:
            ready = await running.client("relations").get("/readyz")
    assert ready.status_code == 503, ready.text
    assert any("could not open the pool" in record.getMessage() for record in caplog.records)
