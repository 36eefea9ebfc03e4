"""Database access shared by every service: naming conventions, engines and request sessions.

Write handlers commit explicitly; a session that leaves a request uncommitted is rolled back, so
a response is never sent for a write that did not commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

from litestar.di import NamedDependency
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


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One session per request. Uncommitted work is rolled back when the request ends, at once,
    errors included (a connection must never stay idle in a transaction holding locks)."""
    async with maker() as session:
        try:
            yield session
        finally:
            if session.in_transaction():
                await session.rollback()


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
