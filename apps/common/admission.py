"""Admission per client network: at most so many new starts of something costly a minute from
one client network (an address, an IPv6 client's /64: ``apps.common.web.client_network``).

A service keeps its starts in a table of its own (``admission_table``; network, key,
started_at) and says what it counts (``AdmissionRule``: its table, the namespace of its lock,
what a refused client is told). Counting is exact across processes: a network's starts are
counted and recorded under its advisory lock, in the caller's transaction. A start whose key
was counted already (the same thing started again) is not counted again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from litestar import Request
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.problems import TooManyRequests
from apps.common.web import client_network

WINDOW = timedelta(minutes=1)

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:space || ':' || :net, 0))")


async def lock_network(session: AsyncSession, namespace: str, network: str) -> None:
    """Hold ``network``'s advisory lock of ``namespace`` until the session's transaction ends:
    what is counted per client network and written under it is counted exactly across
    processes."""
    await session.execute(_LOCK, {"space": namespace, "net": network})


def admission_table(metadata: MetaData, name: str) -> Table:
    """A service's table of the last minute's starts per client network (in its schema). A row
    older than the window is deleted by a later start."""
    return Table(
        name,
        metadata,
        # The client's address, an IPv6 client's /64.
        Column("network", INET, primary_key=True),
        # What was started: the same key again is not a new start.
        Column("key", Text, primary_key=True),
        Column("started_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
        Index(f"ix_{name}_started_at", "started_at"),
    )


@dataclass(frozen=True)
class AdmissionRule:
    """What one service counts per client network."""

    table: Table
    # Of the advisory lock per network; one per rule, so two rules never wait on each other.
    lock_namespace: str
    # What a refused client is told, from the limit and the seconds until a start ends.
    refusal: Callable[[int, int], str]
    # The table's column of keys (cart's table predates the common one's ``key``).
    key_column: str = "key"


@dataclass(frozen=True)
class Admission:
    """Where a request comes from, and how many new starts a minute its network may make."""

    network: str
    per_minute: int


def admission_of(request: Request, per_minute: int) -> Admission | None:
    """The request's admission under a limit of ``per_minute`` (0: no limit); None, not
    counted, also when the client's address is unknown."""
    network = client_network(request)
    return Admission(network, per_minute) if per_minute and network else None


async def admit(session: AsyncSession, rule: AdmissionRule, admission: Admission, key: str) -> bool:
    """Count a start of ``key`` against its client network's limit, in the session's
    transaction: True when it is counted (recorded, the network's lock held, until the caller
    commits), False when ``key`` was counted already (nothing recorded). Over the limit, the
    transaction is rolled back and a 429 with Retry-After is raised."""
    starts = rule.table
    keys = starts.c[rule.key_column]
    network = cast(admission.network, INET)
    await lock_network(session, rule.lock_namespace, admission.network)
    # Every network's ended starts go; those another start is deleting now are skipped
    # (waiting on them could deadlock two starts deleting in different orders).
    ended = (
        select(starts.c.network, keys)
        .where(starts.c.started_at <= func.now() - WINDOW)
        .with_for_update(skip_locked=True)
    )
    await session.execute(delete(starts).where(tuple_(starts.c.network, keys).in_(ended)))
    count, oldest, now, again = (
        await session.execute(
            select(
                func.count(),
                func.min(starts.c.started_at),
                func.now(),
                func.coalesce(func.bool_or(keys == key), False),
            ).where(starts.c.network == network)
        )
    ).one()
    if again:
        return False
    if count >= admission.per_minute:
        await session.rollback()
        retry_after = int((oldest + WINDOW - now).total_seconds()) + 1
        raise TooManyRequests(
            rule.refusal(admission.per_minute, retry_after), retry_after=retry_after
        )
    await session.execute(insert(starts).values({"network": network, rule.key_column: key}))
    return True
