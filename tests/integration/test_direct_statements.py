"""apps.common.direct: a Core statement run on the session's psycopg connection behaves as the
session's own ``execute`` of it: same rows and types, same transaction, same exceptions, same
prepared statement, and a lost connection is invalidated, not handed out again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Enum,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from apps.common.db import create_engine, sessionmaker_for
from apps.common.direct import DirectStatement, run_together, write_at_commit
from tests.pg import TestServer

SCHEMA = "direct_test"
metadata = MetaData(schema=SCHEMA)
things = Table(
    "things",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key", String(40), nullable=False, unique=True),
    Column("payload", JSONB, nullable=False),
    Column("amount", Numeric(10, 2), nullable=False),
    Column("state", Enum("open", "shut", name="thing_state", schema=SCHEMA), nullable=False),
    Column("at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

INSERT = (
    insert(things)
    .values(
        key=bindparam("key"),
        payload=bindparam("payload", type_=JSONB),
        amount=bindparam("amount"),
        state="open",
    )
    .returning(things.c.id, things.c.key, things.c.payload, things.c.amount, things.c.at)
)
BY_KEY = select(things.c.key, things.c.payload, things.c.amount, things.c.state).where(
    things.c.key == bindparam("key")
)
SHUT = update(things).where(things.c.key == bindparam("key")).values(state="shut")
COUNT = select(func.count().label("n"), func.sum(things.c.amount).label("total")).where(
    things.c.amount > bindparam("above", Decimal("0.00"))
)


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __table__ = things


@pytest.fixture
async def engine(pg_server: TestServer) -> AsyncIterator[AsyncEngine]:
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.execute(f"CREATE SCHEMA {SCHEMA}")
    engine = create_engine(pg_server.admin_url, application_name="test-direct", pool_size=2)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with sessionmaker_for(engine)() as session:
        yield session


def as_tuples(rows: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in rows]


async def test_rows_keys_and_types_are_the_sessions(session: AsyncSession) -> None:
    values = {"key": "a", "payload": {"lines": [1, 2], "note": "é"}, "amount": Decimal("12.50")}
    direct = await DirectStatement(INSERT).first(session, values)
    assert direct is not None
    assert direct.key == "a"
    assert direct.payload == values["payload"]
    assert direct.amount == Decimal("12.50")
    assert isinstance(direct.at, datetime)
    assert direct.at.tzinfo is not None
    via_session = (await session.execute(INSERT, {**values, "key": "b"})).one()
    assert direct._fields == tuple(via_session._mapping.keys())
    assert [type(value) for value in direct] == [type(value) for value in via_session]

    for key in ("a", "b"):
        direct_rows = await DirectStatement(BY_KEY).rows(session, {"key": key})
        session_rows = (await session.execute(BY_KEY, {"key": key})).all()
        assert as_tuples(direct_rows) == as_tuples(session_rows)
        assert direct_rows[0].state == "open"
    # A default the statement carries (``above``) is filled in as the session fills it in.
    counted = await DirectStatement(COUNT).first(session)
    assert counted is not None
    assert tuple(counted) == tuple((await session.execute(COUNT)).one()) == (2, Decimal("25.00"))
    assert await DirectStatement(COUNT).scalar(session, {"above": Decimal("100")}) == 0


async def test_it_runs_in_the_sessions_transaction(engine: AsyncEngine) -> None:
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await session.execute(INSERT, {"key": "s", "payload": {}, "amount": Decimal(1)})
        # The direct statement sees the session's uncommitted row, and the session sees its.
        assert await DirectStatement(SHUT).rowcount(session, {"key": "s"}) == 1
        assert (await session.execute(BY_KEY, {"key": "s"})).one().state == "shut"
        await DirectStatement(INSERT).first(session, {"key": "d", "payload": {}, "amount": 2})
        await session.rollback()
    async with maker() as session:
        assert await DirectStatement(COUNT).scalar(session) == 0
        await DirectStatement(INSERT).first(session, {"key": "kept", "payload": {}, "amount": 3})
        await session.commit()
    async with maker() as session:
        assert as_tuples(await DirectStatement(BY_KEY).rows(session, {"key": "kept"})) == [
            ("kept", {}, Decimal("3.00"), "open")
        ]


async def test_errors_are_sqlalchemys_and_the_session_recovers(session: AsyncSession) -> None:
    row = {"key": "dup", "payload": {}, "amount": Decimal(1)}
    await DirectStatement(INSERT).first(session, row)
    with pytest.raises(IntegrityError) as raised:
        await DirectStatement(INSERT).first(session, row)
    assert getattr(raised.value.orig, "sqlstate", None) == "23505"
    assert not raised.value.connection_invalidated
    await session.rollback()
    assert await DirectStatement(COUNT).scalar(session) == 0
    # A missing value: the session's own error, before anything is sent.
    with pytest.raises(StatementError, match="required for bind parameter 'key'") as missing:
        await DirectStatement(BY_KEY).rows(session, {})
    with pytest.raises(StatementError, match="required for bind parameter 'key'") as by_session:
        await session.execute(BY_KEY, {})
    assert type(missing.value) is type(by_session.value)
    assert await DirectStatement(COUNT).scalar(session) == 0


async def test_a_lost_connection_is_invalidated_not_reused(
    engine: AsyncEngine, pg_server: TestServer
) -> None:
    maker = sessionmaker_for(engine)
    async with maker() as session:
        backend = await DirectStatement(select(func.pg_backend_pid().label("pid"))).scalar(session)
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(DBAPIError) as raised:
            await DirectStatement(COUNT).scalar(session)
        assert raised.value.connection_invalidated
        await session.rollback()
    for _ in range(3):  # every pooled connection the next requests get works
        async with maker() as session:
            assert await DirectStatement(COUNT).scalar(session) == 0


async def test_it_shares_the_sessions_prepared_statement(session: AsyncSession) -> None:
    await DirectStatement(INSERT).first(session, {"key": "p", "payload": {}, "amount": 1})
    direct = DirectStatement(BY_KEY)
    for _ in range(4):
        await session.execute(BY_KEY, {"key": "p"})
        await direct.rows(session, {"key": "p"})
    listed = await session.execute(text("SELECT statement FROM pg_prepared_statements"))
    statements = [row[0] for row in listed]
    assert sum("things.key = $1" in text for text in statements) == 1, statements


def test_statements_it_cannot_run_as_the_session_would_are_refused() -> None:
    with pytest.raises(TypeError, match="ORM"):
        DirectStatement(select(Thing).where(things.c.id == 1))
    with pytest.raises(TypeError, match="expanding"):
        DirectStatement(
            select(things.c.id).where(things.c.key.in_(bindparam("keys", expanding=True)))
        )

    with pytest.raises(TypeError, match="values"):
        DirectStatement(things.insert().returning(things.c.id))


async def test_rows_without_plain_names_are_read_by_position(session: AsyncSession) -> None:
    unnamed = DirectStatement(select(func.abs(bindparam("n")), func.abs(bindparam("m"))))
    assert await unnamed.rows(session, {"n": -1, "m": -2}) == [(1, 2)]


async def test_one_session_through_commits_rollbacks_and_savepoints(session: AsyncSession) -> None:
    """The connection is looked up once per transaction: every transaction of a session gets
    its own, and a savepoint's rollback takes back what a direct statement did inside it."""
    insert_thing = DirectStatement(INSERT)
    await insert_thing.first(session, {"key": "one", "payload": {}, "amount": 1})
    await session.commit()
    await insert_thing.first(session, {"key": "two", "payload": {}, "amount": 2})
    await session.rollback()
    await insert_thing.first(session, {"key": "three", "payload": {}, "amount": 3})
    savepoint = await session.begin_nested()
    await insert_thing.first(session, {"key": "four", "payload": {}, "amount": 4})
    await savepoint.rollback()
    await session.commit()
    await session.close()
    keys = [row.key for row in await DirectStatement(select(things.c.key)).rows(session)]
    assert sorted(keys) == ["one", "three"]


async def test_on_a_connection_only_in_autocommit(engine: AsyncEngine) -> None:
    """On a connection (the nonce's way): in autocommit, each statement is committed as it
    runs; outside it SQLAlchemy would not know of the transaction, so it is refused."""
    row = {"key": "auto", "payload": {}, "amount": Decimal(5)}
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        assert await DirectStatement(INSERT).first(autocommit, row) is not None
        with pytest.raises(IntegrityError):
            await DirectStatement(INSERT).first(autocommit, row)
    async with engine.connect() as connection:
        with pytest.raises(TypeError, match="autocommit"):
            await DirectStatement(COUNT).scalar(connection)
    async with sessionmaker_for(engine)() as session:
        assert await DirectStatement(COUNT).scalar(session) == 1


# -- several statements in one round trip, and writes sent with the COMMIT ---------------------
class RoundTrips:
    """Counts the round trips of a psycopg connection: libpq's trace of what the server sent,
    one ReadyForQuery per synchronisation point (a simple query such as BEGIN, or a Sync)."""

    def __init__(self, driver: Any, path: Any) -> None:
        self._file = open(path, "w+")  # noqa: SIM115 (closed in count)
        self._driver = driver
        driver.pgconn.trace(self._file.fileno())
        driver.pgconn.set_trace_flags(
            psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
        )

    def count(self) -> int:
        self._driver.pgconn.untrace()
        self._file.seek(0)
        trace = self._file.read()
        self._file.close()
        return sum(1 for line in trace.splitlines() if "\tReadyForQuery\t" in line)


async def driver_of(session: AsyncSession) -> Any:
    connection = await session.connection()
    return connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]


async def test_together_in_one_round_trip_in_the_order_given(
    session: AsyncSession, tmp_path: Any
) -> None:
    """``run_together``: the statements run in the order given, each sees what those before it
    did, and all of them cost one round trip."""
    await session.execute(INSERT, {"key": "a", "payload": {}, "amount": Decimal(1)})
    trips = RoundTrips(await driver_of(session), tmp_path / "trace")
    inserted, shut, found, counted = await run_together(
        session,
        (DirectStatement(INSERT), {"key": "b", "payload": {"n": 1}, "amount": Decimal(2)}),
        (DirectStatement(SHUT), {"key": "a"}),
        (DirectStatement(BY_KEY), {"key": "a"}),
        (DirectStatement(COUNT), None),
    )
    assert trips.count() == 1
    assert [row.key for row in inserted] == ["b"]
    assert shut == []  # no RETURNING: no rows
    assert as_tuples(found) == [("a", {}, Decimal("1.00"), "shut")]
    assert as_tuples(counted) == [(2, Decimal("3.00"))]


async def test_together_the_first_failure_raises_and_nothing_after_it_runs(
    engine: AsyncEngine,
) -> None:
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "x", "payload": {}, "amount": 1})
        await session.commit()
    async with maker() as session:
        with pytest.raises(IntegrityError) as raised:
            await run_together(
                session,
                (DirectStatement(SHUT), {"key": "x"}),
                (DirectStatement(INSERT), {"key": "x", "payload": {}, "amount": 2}),
                (DirectStatement(INSERT), {"key": "y", "payload": {}, "amount": 3}),
            )
        assert "things_key_key" in str(raised.value.orig)
        assert raised.value.statement == DirectStatement(INSERT).sql
        await session.rollback()
        # The session goes on after its rollback; nothing of the failed batch was kept.
        assert as_tuples(await DirectStatement(BY_KEY).rows(session, {"key": "x"})) == [
            ("x", {}, Decimal("1.00"), "open")
        ]
        assert await DirectStatement(COUNT).scalar(session) == 1


async def test_writes_at_commit_go_with_the_commit_in_one_round_trip(
    engine: AsyncEngine, tmp_path: Any
) -> None:
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "w1", "payload": {}, "amount": 1})
        await write_at_commit(session, DirectStatement(SHUT), {"key": "w1"})
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "w2", "payload": {}, "amount": 2}
        )
        # Not written yet: nothing in this transaction reads them.
        assert as_tuples(await DirectStatement(BY_KEY).rows(session, {"key": "w1"}))[0][3] == (
            "open"
        )
        trips = RoundTrips(await driver_of(session), tmp_path / "trace")
        await session.commit()
        assert trips.count() == 1
        assert not session.in_transaction()
    async with maker() as session:
        rows = await session.execute(select(things.c.key, things.c.state).order_by(things.c.key))
        assert as_tuples(rows) == [("w1", "shut"), ("w2", "open")]


async def test_writes_at_commit_are_made_by_any_commit_and_forgotten_by_a_rollback(
    engine: AsyncEngine,
) -> None:
    """A commit makes them, a rollback, or a transaction that ends otherwise, forgets them."""
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await DirectStatement(COUNT).scalar(session)
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "k", "payload": {}, "amount": 1}
        )
        await session.commit()
        await DirectStatement(COUNT).scalar(session)
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "r", "payload": {}, "amount": 1}
        )
        await session.rollback()
        await DirectStatement(COUNT).scalar(session)
        await session.commit()
        await DirectStatement(COUNT).scalar(session)
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "c", "payload": {}, "amount": 1}
        )
    # Closed without a commit: as a rollback.
    async with maker() as session:
        await DirectStatement(COUNT).scalar(session)
        await session.commit()  # nothing queued
    async with maker() as session:
        keys = await session.scalars(select(things.c.key).order_by(things.c.key))
        assert list(keys) == ["k"]


async def test_a_write_at_commit_that_fails_takes_the_whole_transaction_back(
    engine: AsyncEngine,
) -> None:
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "dup", "payload": {}, "amount": 1})
        await session.commit()
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "new", "payload": {}, "amount": 1})
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "dup", "payload": {}, "amount": 9}
        )
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
        keys = await session.scalars(select(things.c.key).order_by(things.c.key))
        assert list(keys) == ["dup"]


async def test_writes_at_commit_with_orm_changes_and_savepoints(engine: AsyncEngine) -> None:
    """ORM changes still pending are flushed first; a write cannot be queued inside a
    savepoint, whose rollback could not take it back; a commit with a savepoint open releases
    it, then sends the writes with the COMMIT."""
    maker = sessionmaker_for(engine)
    async with maker() as session:
        session.add(Thing(key="orm", payload={}, amount=Decimal(1), state="open"))
        await DirectStatement(COUNT).scalar(session)
        await write_at_commit(session, DirectStatement(SHUT), {"key": "orm"})
        await session.commit()
    async with maker() as session:
        await DirectStatement(COUNT).scalar(session)
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "sp", "payload": {}, "amount": 1}
        )
        savepoint = await session.begin_nested()
        # Inside a savepoint, written now: the savepoint's rollback takes it back.
        await write_at_commit(session, DirectStatement(SHUT), {"key": "in-sp"})
        await DirectStatement(INSERT).first(session, {"key": "in", "payload": {}, "amount": 1})
        await savepoint.commit()
        await session.commit()
    async with maker() as session:
        rows = await session.execute(select(things.c.key, things.c.state).order_by(things.c.key))
        assert as_tuples(rows) == [("in", "open"), ("orm", "shut"), ("sp", "open")]


async def test_a_write_at_commit_outside_a_transaction_is_written_in_the_next(
    engine: AsyncEngine,
) -> None:
    """Review s22 LOW-5: an effect that committed before its caller queued its answer: the
    write begins the next transaction, which the caller's commit commits."""
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "n", "payload": {}, "amount": 1}
        )
        await session.commit()
    async with maker() as session:
        assert list(await session.scalars(select(things.c.key))) == ["n"]


async def test_a_transaction_committed_with_a_savepoint_open_sends_its_writes(
    engine: AsyncEngine,
) -> None:
    """Review s22 MEDIUM-1: ``session.begin()``'s commit (the root transaction's, with a
    savepoint still open) committed the transaction without its writes at commit: the hook
    waited for a commit with no savepoint open, which that way of committing never makes."""
    maker = sessionmaker_for(engine)
    async with maker() as session, session.begin():
        await DirectStatement(INSERT).first(session, {"key": "a", "payload": {}, "amount": 1})
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "queued", "payload": {}, "amount": 1}
        )
        await session.begin_nested()
        await DirectStatement(INSERT).first(session, {"key": "b", "payload": {}, "amount": 1})
    async with maker() as session:
        keys = await session.scalars(select(things.c.key).order_by(things.c.key))
        assert list(keys) == ["a", "b", "queued"]


async def test_after_a_failed_commit_the_session_commits_nothing_more_until_rolled_back(
    engine: AsyncEngine,
) -> None:
    """Review s22 MEDIUM-3: a write at commit failed, and the session still took the
    transaction for active: a second commit said nothing (PostgreSQL ended the failed
    transaction with a ROLLBACK), and a statement after the failure ran. As with SQLAlchemy's
    own failed commit, the session now needs its rollback first."""
    maker = sessionmaker_for(engine)
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "dup", "payload": {}, "amount": 1})
        await session.commit()
    async with maker() as session:
        await DirectStatement(INSERT).first(session, {"key": "lost", "payload": {}, "amount": 1})
        await write_at_commit(
            session, DirectStatement(INSERT), {"key": "dup", "payload": {}, "amount": 2}
        )
        with pytest.raises(IntegrityError):
            await session.commit()
        with pytest.raises(Exception, match=r"'prepared' state|rollback"):
            await session.execute(select(things.c.key))
        await session.rollback()
        keys = await session.scalars(select(things.c.key))
        assert list(keys) == ["dup"]
