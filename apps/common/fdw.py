"""Reading another service's data through postgres_fdw foreign tables.

Every FDW query path runs inside :func:`remote_read`: a savepoint with a statement timeout, so
a slow or unreachable provider costs a bounded wait and leaves the local transaction usable. A
failure to reach the provider raises :class:`ProviderUnavailable`, which callers turn into a
degraded answer (``X-Rose-Degraded``) or, when they cannot answer without it, a 503 problem.

Foreign tables are never in a service's MetaData (migrations do not manage them). A consumer
declares the ones only it reads in its models module, in a MetaData of their own named after the
provider; the likes table, read by market and blog alike, is declared here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Select,
    String,
    Table,
    any_,
    bindparam,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.problems import DependencyUnavailable

logger = logging.getLogger("rose.fdw")

DEFAULT_REMOTE_TIMEOUT_MS = 2000
DEGRADED_HEADER = "X-Rose-Degraded"

# SQLSTATEs meaning "the provider could not answer": connection failures (class 08), our
# statement timeout (57014), and a remote server shutting down or out of connections.
UNAVAILABLE_SQLSTATES = frozenset({"57014", "57P01", "57P03", "53300"})


class ProviderUnavailable(DependencyUnavailable):
    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(
            f"The {provider} data is unavailable right now ({reason}); try again shortly",
            provider=provider,
        )
        self.provider = provider


def _sqlstate(exc: DBAPIError) -> str:
    return getattr(exc.orig, "sqlstate", None) or ""


@asynccontextmanager
async def remote_read(
    session: AsyncSession,
    provider: str,
    *,
    timeout_ms: int = DEFAULT_REMOTE_TIMEOUT_MS,
    isolate: bool = True,
) -> AsyncIterator[None]:
    """Bound (and by default isolate) the FDW queries run inside the block.

    ``isolate=False`` is for requests that cannot answer at all without the provider: no
    savepoint (two local and two remote round trips fewer), the timeout stays on until the
    transaction ends, and a failure leaves the transaction to be rolled back by the caller."""
    savepoint = await session.begin_nested() if isolate else None
    await session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
    try:
        yield
    except DBAPIError as exc:
        if savepoint is not None:
            await savepoint.rollback()
        state = _sqlstate(exc)
        if state.startswith("08") or state in UNAVAILABLE_SQLSTATES:
            logger.warning("%s unavailable through FDW: %s %s", provider, state, exc.orig)
            raise ProviderUnavailable(provider, "timeout" if state == "57014" else state) from exc
        raise
    else:
        if savepoint is not None:
            # Back to the session's own timeout for whatever the transaction does next.
            await session.execute(text("SET LOCAL statement_timeout TO DEFAULT"))
            await savepoint.commit()


# -- foreign tables -------------------------------------------------------------------------
likes_schema = MetaData(schema="likes")

# likes.likes in db_market and db_blog: the likes service's export view (active likes only).
foreign_likes = Table(
    "likes",
    likes_schema,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", BigInteger),
    Column("target_type", String(32)),
    Column("target_slug", String(255)),
    Column("target_id", BigInteger),
    Column("created_at", DateTime(timezone=True)),
)


def liked_slugs_query(user_id: int, slugs: list[str]) -> Select[tuple[str]]:
    """Which of these products the user likes: one remote query, the page's keys as one array
    (pushed down as ``target_slug = ANY($1)``), never a query per product."""
    return select(foreign_likes.c.target_slug).where(
        foreign_likes.c.user_id == user_id,
        foreign_likes.c.target_type == "product",
        foreign_likes.c.target_slug == any_(bindparam("slugs", slugs, type_=ARRAY(String))),
    )


async def liked_slugs_among(session: AsyncSession, user_id: int, slugs: Iterable[str]) -> set[str]:
    keys = list(slugs)
    if not keys:
        return set()
    return set(await session.scalars(liked_slugs_query(user_id, keys)))


async def liked_ids_among(session: AsyncSession, user_id: int, ids: Iterable[int]) -> set[int]:
    """Which of these posts the user likes (one remote query, as above)."""
    keys = list(ids)
    if not keys:
        return set()
    rows = await session.scalars(
        select(foreign_likes.c.target_id).where(
            foreign_likes.c.user_id == user_id,
            foreign_likes.c.target_type == "post",
            foreign_likes.c.target_id == any_(bindparam("ids", keys, type_=ARRAY(BigInteger))),
        )
    )
    return set(rows)
