"""Database access shared by every service: naming conventions, engines and request sessions.

Write handlers commit explicitly; a session that leaves a request uncommitted is rolled back, so
a response is never sent for a write that did not commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import BigInteger, DateTime, MetaData, Table, func, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapped, mapped_column

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


def create_engine(url: str, *, application_name: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        as_psycopg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"application_name": application_name, "connect_timeout": 5},
    )


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
            if session is not None:
                await session.close()

    return handle


async def end_read(session: AsyncSession) -> None:
    """End the request's read transaction before waiting on another service: a connection must
    not sit idle in a transaction (holding its snapshot and locks) while the other one answers."""
    if session.in_transaction():
        await session.rollback()


async def database_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
