"""The request's database session ends with the request, however the request ends: work left
uncommitted is rolled back and the connection goes back to the pool; a session a request never
used, or used and committed, holds nothing when the request ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.testing import AsyncTestClient
from litestar.types import Scope
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from apps.common.db import close_request_session, create_engine, request_session, sessionmaker_for
from tests.conftest import admin_connect


@pytest.fixture
async def engine(pg_server) -> AsyncIterator[AsyncEngine]:
    with admin_connect(pg_server) as admin:
        admin.execute("DROP TABLE IF EXISTS request_session_marks")
        admin.execute("CREATE TABLE request_session_marks (name text PRIMARY KEY)")
    engine = create_engine(pg_server.admin_url, application_name="request-session-test")
    try:
        yield engine
    finally:
        await engine.dispose()
        with admin_connect(pg_server) as admin:
            admin.execute("DROP TABLE request_session_marks")


def app_on(engine: AsyncEngine, pg_server=None) -> Litestar:
    maker = sessionmaker_for(engine)

    def provide(scope: Scope) -> AsyncSession:
        return request_session(maker, scope)

    async def mark(session: AsyncSession, name: str) -> None:
        await session.execute(text("INSERT INTO request_session_marks VALUES (:n)"), {"n": name})

    @get("/unused", sync_to_thread=False)
    def unused(db_session: NamedDependency[AsyncSession]) -> str:
        return "ok"

    @get("/committed")
    async def committed(db_session: NamedDependency[AsyncSession]) -> str:
        await mark(db_session, "committed")
        await db_session.commit()
        return "ok"

    @get("/committed-then-read")
    async def committed_then_read(db_session: NamedDependency[AsyncSession]) -> str:
        await mark(db_session, "committed-then-read")
        await db_session.commit()
        await db_session.execute(text("SELECT 1"))  # begins again, left open
        return "ok"

    @get("/left-open")
    async def left_open(db_session: NamedDependency[AsyncSession]) -> str:
        await mark(db_session, "left-open")
        return "ok"

    @get("/failed")
    async def failed(db_session: NamedDependency[AsyncSession]) -> str:
        await mark(db_session, "failed")
        raise RuntimeError("the handler failed after writing")

    @get("/connection-lost")
    async def connection_lost(db_session: NamedDependency[AsyncSession]) -> str:
        """Read, then the server ends this session before the request's transaction ends."""
        pid = await db_session.scalar(text("SELECT pg_backend_pid()"))
        with admin_connect(pg_server) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        return "read before the connection was lost"

    app = Litestar(
        [unused, committed, committed_then_read, left_open, failed, connection_lost],
        dependencies={"db_session": Provide(provide, sync_to_thread=False)},
    )
    app.asgi_handler = close_request_session(app.asgi_handler)
    return app


async def test_a_request_session_holds_nothing_once_its_request_ended(engine, pg_server) -> None:
    async with AsyncTestClient(app_on(engine)) as client:
        for path, status in (
            ("/unused", 200),
            ("/committed", 200),
            ("/committed-then-read", 200),
            ("/left-open", 200),
            ("/failed", 500),
        ):
            assert (await client.get(path)).status_code == status, path
            assert engine.pool.checkedout() == 0, path  # type: ignore[attr-defined]
    with admin_connect(pg_server) as admin:
        marks = {row[0] for row in admin.execute("SELECT name FROM request_session_marks")}
        idle_in_transaction = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'request-session-test' AND state LIKE 'idle in transaction%'"
        ).fetchone()
    assert marks == {"committed", "committed-then-read"}
    assert idle_in_transaction == (0,)


async def test_a_connection_lost_before_the_session_closed_is_not_the_requests_error(
    engine, pg_server, caplog
) -> None:
    """The server ended the request's session after its read (a restart, a terminated
    backend): the rollback at the end fails. Before, that error escaped the app after the answer
    (uvicorn's "Exception in ASGI application"); now it is a warning, the lost connection is
    discarded and the pool serves on."""
    db_log = logging.getLogger("rose.db")  # it may not propagate (the services' logging)
    db_log.addHandler(caplog.handler)
    try:
        async with AsyncTestClient(app_on(engine, pg_server)) as client:
            response = await client.get("/connection-lost")
            assert (response.status_code, response.text) == (
                200,
                "read before the connection was lost",
            )
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            assert (await client.get("/committed")).status_code == 200
    finally:
        db_log.removeHandler(caplog.handler)
    assert "could not end the request's transaction" in caplog.text
