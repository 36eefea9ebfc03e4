"""The nonces of signed actions a service accepted, kept for the signature's validity window in
the service's own database, so that the same signed action delivered twice has one effect."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam, delete, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.common.direct import DirectStatement
from apps.common.signing import MAX_CLOCK_SKEW_SECONDS, MAX_NONCE_LENGTH

# A nonce can be presented while its timestamp is within the skew, on either side of now.
KEEP = timedelta(seconds=2 * MAX_CLOCK_SKEW_SECONDS + 60)
# One accepted action in this many also deletes the nonces that can no longer be presented.
SWEEP_ONE_IN = 100


def nonce_table(metadata: MetaData) -> Table:
    """The ``request_nonces`` table of a service, in that service's schema."""
    return Table(
        "request_nonces",
        metadata,
        Column("nonce", String(MAX_NONCE_LENGTH), primary_key=True),
        Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    )


class NonceStore:
    def __init__(self, table: Table) -> None:
        # Built once: constructing a statement and its cache key cost as much as running it.
        self._remember = DirectStatement(
            insert(table)
            .values(nonce=bindparam("presented"), expires_at=func.now() + KEEP)
            .on_conflict_do_nothing(index_elements=["nonce"])
            .returning(table.c.nonce)
        )
        self._sweep = delete(table).where(table.c.expires_at < func.now())

    async def remember(self, engine: AsyncEngine, nonce: str) -> bool:
        """True the first time ``nonce`` is presented, False on every later delivery. (Core on
        a connection of its own, in autocommit: the INSERT is committed before the action runs,
        whatever the action does, and costs no BEGIN and COMMIT round trips.)"""
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            fresh = await self._remember.scalar(connection, {"presented": nonce})
            if random.randrange(SWEEP_ONE_IN) == 0:
                await connection.execute(self._sweep)
        return fresh is not None
