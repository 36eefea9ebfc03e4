"""Database access shared by every service: naming conventions, engines and request sessions.

Write handlers commit explicitly; a session that leaves a request uncommitted is rolled back, so
a response is never sent for a write that did not commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from select import POLLIN, poll
from typing import Any, ClassVar, Protocol, TypeVar, cast

from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg import pq
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    MetaData,
    Table,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from apps.common.problems import NotFound
from apps.common.settings import POOL_SIZE, POOL_TIMEOUT

logger = logging.getLogger("rose.db")

# The request-scoped session handlers receive as ``db_session: DbSession``.
DbSession = NamedDependency[AsyncSession]

# One naming convention for every service, so constraint names are stable across migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(schema: str) -> MetaData:
    """The MetaData of one service: its own schema, the shared naming convention."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


class TimestampedMixin:
    """created_at/updated_at kept by the database clock, deleted_at for soft deletes."""

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class IdentityPkMixin:
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)


def table_of(model: type[Any]) -> Table:
    """A declarative model's Table. (SQLAlchemy types ``__table__`` as any FromClause; a
    declarative class with ``__tablename__`` always maps a Table.)"""
    return cast(Table, model.__table__)


def as_psycopg_url(url: str) -> str:
    """Accept ``postgresql://`` DSNs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# A pooled connection idle for longer than this is pinged before use (see check_on_checkout).
PING_AFTER_IDLE_SECONDS = 10.0
_IDLE_SINCE = "rose_idle_since"


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = POOL_SIZE,
    pool_timeout: float = POOL_TIMEOUT,
) -> AsyncEngine:
    """The process's pool: ``pool_size`` connections, kept. No overflow: connections opened
    beyond the pool under load were closed again as soon as they were returned, so a steady
    load opened and closed them all the time. A request that finds every connection busy waits
    up to ``pool_timeout`` seconds."""
    engine = create_async_engine(
        as_psycopg_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args={"application_name": application_name, "connect_timeout": 5},
    )
    check_on_checkout(engine)
    return engine


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the server has (probably) closed this idle connection, without a round trip.

    An idle pooled connection has nothing to read: its socket turns readable when the server
    says goodbye (a restart or ``pg_terminate_backend`` sends a FATAL message, then closes it).
    The rare harmless message (a parameter change after a reload) costs a reconnect, no more."""
    pgconn = dbapi_connection.driver_connection.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    # poll, not select: a socket's number may be above select's FD_SETSIZE in a busy process.
    poller = poll()
    poller.register(pgconn.socket, POLLIN)
    return bool(poller.poll(0))


def check_on_checkout(engine: AsyncEngine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Pessimistic disconnect handling without a round trip on every checkout.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one round trip per request (two for a
    signed action, whose nonce is stored first). Instead every checkout looks at the socket (a
    connection the server closed, as a restart does, is replaced before the request sees it), and
    only a connection idle for ``idle_seconds`` (which a silent network failure may have cut) is
    pinged."""

    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _idle_from_now(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _check(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None:
            return  # a new connection
        try:
            if _closed_by_server(dbapi_connection):
                raise DisconnectionError("the server closed this pooled connection")
            if time.monotonic() - idle_since >= idle_seconds and not engine.dialect.do_ping(
                dbapi_connection
            ):
                raise DisconnectionError("pooled connection failed its ping")
        except DisconnectionError:
            raise
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its check: {exc}") from exc


# How long start-up may spend opening the pool: a database that does not answer is the
# readiness check's business, not a reason to start late.
WARM_SECONDS = 5.0

# One foreign table per foreign server that the connected role may read. Reading it (no rows)
# makes postgres_fdw log in to that server for this session, and keep_connections keeps it.
_FOREIGN_TABLE_PER_SERVER = text(
    "SELECT DISTINCT ON (t.ftserver) format('%I.%I', n.nspname, c.relname) "
    "FROM pg_foreign_table AS t "
    "JOIN pg_class AS c ON c.oid = t.ftrelid "
    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE has_any_column_privilege(c.oid, 'SELECT') "
    "ORDER BY t.ftserver, c.oid"
)


async def warm_pool(engine: AsyncEngine, size: int, *, seconds: float = WARM_SECONDS) -> int:
    """Open ``size`` connections of ``engine``'s pool, each with its postgres_fdw connections,
    and return how many were opened. Requests right after a start (a deploy) then find them
    open: the first burst paid a login per pool connection, and another per foreign server on
    each connection's first foreign read (bench/README.md, "eleventh pass"). Never fails the
    start for the database: one that does not answer is the readiness check's business, and
    the pool opens connections on demand as before."""
    started = time.perf_counter()
    opened = 0
    foreign_tables: list[str] = []
    try:
        # Held together, so that the pool opens ``size`` different connections; the timeout
        # ends first, then the held connections go back to the pool.
        async with contextlib.AsyncExitStack() as held, asyncio.timeout(seconds):
            for _ in range(size):
                connection = await held.enter_async_context(engine.connect())
                opened += 1
                if opened == 1:
                    found = await connection.execute(_FOREIGN_TABLE_PER_SERVER)
                    foreign_tables = [str(name) for name in found.scalars()]
                for table in foreign_tables:
                    try:
                        # A name from the catalog, quoted by format('%I.%I').
                        await connection.exec_driver_sql(f"SELECT FROM {table} LIMIT 0")
                    except DBAPIError as exc:
                        # That provider is down: this connection logs in to it on first use.
                        logger.warning("could not reach %s at start-up: %s", table, exc.orig)
                    finally:
                        await connection.rollback()
    except (DBAPIError, OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else getattr(exc, "orig", exc)
        logger.warning(
            "could not open the pool at start-up (%d of %d connections): %s; "
            "connections are opened on demand",
            opened,
            size,
            reason,
        )
        return opened
    logger.info(
        "pool open: %d connections, each reading %d foreign server(s), in %.0f ms",
        opened,
        len(foreign_tables),
        (time.perf_counter() - started) * 1000,
    )
    return opened


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# Where a request's session waits for the middleware that closes it (scope["state"]).
REQUEST_SESSION_KEY = "rose_db_session"


def request_session(maker: async_sessionmaker[AsyncSession], scope: Scope) -> AsyncSession:
    """The request's session, made on first use and closed by :func:`close_request_session`
    when the request ends (rolled back if it was left uncommitted, errors included)."""
    state = scope.setdefault("state", {})
    session: AsyncSession | None = state.get(REQUEST_SESSION_KEY)
    if session is None:
        session = state[REQUEST_SESSION_KEY] = maker()
    return session


def close_request_session(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: the request's session is closed when the request ends, however it ends.
    (A generator dependency would do this too, but Litestar leaves one unclosed when a later
    parameter fails validation, and the garbage collector then closes it in a task of its own.)"""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            session = scope.get("state", {}).pop(REQUEST_SESSION_KEY, None)
            # Only a session inside a transaction holds a connection, and work to roll back;
            # one never used, or committed or rolled back, has nothing to close (closing it
            # still cost a greenlet switch of SQLAlchemy's async bridge: bench.edge_overhead).
            if session is not None and session.in_transaction():
                await _close(session)

    return handle


async def _close(session: AsyncSession) -> None:
    try:
        await session.close()
    except Exception:
        # The rollback failed: the server ended the session (a restart, a terminated backend),
        # which rolled the transaction back itself, and SQLAlchemy has discarded the
        # connection. The request's answer is already out; this is not the request's error.
        logger.warning("could not end the request's transaction", exc_info=True)


def set_for_the_transaction(setting: str, value: str) -> ColumnElement[str]:
    """A column that sets ``setting`` as ``SET LOCAL`` does, evaluated by the statement that
    selects it, so that a setting costs no round trip of its own (it applies from the next
    statement: a statement's own timeout, say, is armed when it starts). Names and values are
    the code's own constants, never input."""
    return literal_column(f"set_config('{setting}', '{value}', true)")


def one_plan_for_the_rest_of_the_transaction() -> ColumnElement[str]:
    """A column for a transaction's first statement: the prepared statements after it run on
    their one generic plan (``SET LOCAL plan_cache_mode = force_generic_plan``, without a round
    trip of its own). For statements whose every lookup is by key: PostgreSQL's default kept
    planning some of them anew on every call, at more than their running cost
    (bench/README.md). A generic plan does not see the values, so it is only for statements
    that need no value to find their index (tests/integration/test_orders.py reads the rows
    such a plan touches)."""
    return set_for_the_transaction("plan_cache_mode", "force_generic_plan")


async def end_read(session: AsyncSession) -> None:
    """End the request's read transaction before waiting on another service: a connection must
    not sit idle in a transaction (holding its snapshot and locks) while the other one answers."""
    if session.in_transaction():
        await session.rollback()


class LiveRow(Protocol):
    """A row found by its ``id`` that may be soft-deleted (``deleted_at``)."""

    # ClassVar: the mapped class's columns, as a query names them (mypy matches no plain
    # Mapped member of a protocol against a mapped class).
    id: ClassVar[Mapped[int]]
    deleted_at: ClassVar[Mapped[datetime | None]]


Row = TypeVar("Row", bound=LiveRow)


async def lock_live_row(session: AsyncSession, model: type[Row], row_id: int, what: str) -> Row:
    """The row ``row_id`` of ``model`` that is not deleted, locked until commit (FOR UPDATE);
    else a 404 saying "There is no {what} {row_id}"."""
    row = await session.scalar(
        select(model).where(model.id == row_id, model.deleted_at.is_(None)).with_for_update()
    )
    if row is None:
        raise NotFound(f"There is no {what} {row_id}")
    return row


# How long /readyz waits for its database before it answers that it did not answer (a hung
# server, not a refused connection: without a bound /readyz answered nothing while it hung).
READY_WAIT_SECONDS = 5.0
# Checks given up on: their cancellation (psycopg asks the hung server to cancel) goes on
# without the probe waiting for it.
_abandoned: set[asyncio.Task[None]] = set()


def _forget(check: asyncio.Task[None]) -> None:
    _abandoned.discard(check)
    if not check.cancelled():
        check.exception()  # retrieved: its failure was answered as the wait's end


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def _pool_full(pool: QueuePool, waited: float, why: str) -> str:
    return f"all {pool.size()} database connections are busy (none free within {waited:g} s: {why})"


async def database_unready(
    engine: AsyncEngine, wait_seconds: float = READY_WAIT_SECONDS
) -> str | None:
    """Why the process cannot use its database now (None: it can). A pool whose every
    connection stays busy is said as such: "database unreachable" sent the on-call to a
    PostgreSQL that answered at once while slow SumUp calls held the connections."""
    check = asyncio.create_task(_select_one(engine))
    done, _ = await asyncio.wait({check}, timeout=wait_seconds)
    pool = engine.pool
    if not done:
        check.cancel()
        _abandoned.add(check)
        check.add_done_callback(_forget)
        if isinstance(pool, QueuePool) and pool.checkedout() >= pool.size():
            return _pool_full(pool, wait_seconds, "the pool is full, or the database hangs")
        return f"the database did not answer within {wait_seconds:g} s"
    try:
        check.result()
    except PoolTimeout:
        if not isinstance(pool, QueuePool):
            return "all its database connections are busy (the pool is full)"
        return _pool_full(pool, pool.timeout(), "the pool is full, not the database down")
    except DBAPIError as exc:
        # The class of the server's refusal, not its text (/readyz is reached through the
        # proxy: no role, host or port); the service's own log line has the whole of it.
        # A refused connection carries no SQLSTATE (psycopg raises it from libpq's message),
        # so the server's FATAL line is read too.
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        said = str(exc.orig)
        if sqlstate.startswith("28") or any(
            words in said
            for words in ("password authentication failed", "no pg_hba.conf entry", 'role "')
        ):
            return (
                "the database refused its login (a password or role not the server's: "
                "rose db check names it)"
            )
        if sqlstate == "3D000" or ('database "' in said and "does not exist" in said):
            return "its database does not exist on the server"
        if sqlstate.startswith("57P0") or "the database system is" in said:
            return "the database is starting up or shutting down"
        return "database unreachable"
    except Exception:
        return "database unreachable"
    return None
