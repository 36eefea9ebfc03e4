"""The nonces of signed actions a service accepted, kept for the signature's validity window in
the service's own database, so that the same signed action delivered twice has one effect."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apps.common.direct import Call, DirectStatement
from apps.common.signing import MAX_CLOCK_SKEW_SECONDS, MAX_NONCE_LENGTH

logger = logging.getLogger("rose.nonces")

# A nonce can be presented while its timestamp is within the skew, on either side of now.
KEEP = timedelta(seconds=2 * MAX_CLOCK_SKEW_SECONDS + 60)
# One accepted action in this many also deletes the nonces that can no longer be presented.
SWEEP_ONE_IN = 100
# The most nonces one sweep deletes (a hundred deliveries make a few hundred at most).
SWEEP_BATCH = 10_000


def draws_sweep() -> bool:
    """Whether this action sweeps the expired nonces (one in SWEEP_ONE_IN, at random)."""
    return random.randrange(SWEEP_ONE_IN) == 0


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
        # At most SWEEP_BATCH rows a sweep: a backlog goes in bounded steps, each well inside
        # the statement timeout, instead of one DELETE that may time out every time.
        # Rows another sweep holds are skipped (it deletes them): two sweeps never wait on, or
        # deadlock with, each other.
        expired = (
            select(table.c.nonce)
            .where(table.c.expires_at < func.now())
            .order_by(table.c.expires_at)
            .limit(SWEEP_BATCH)
            .with_for_update(skip_locked=True)
        )
        self._sweep = delete(table).where(table.c.nonce.in_(expired.scalar_subquery()))

    def remembering(self, nonce: str) -> Call:
        """The INSERT of :meth:`remember` as a statement of another transaction (its one row
        back: the nonce is new)."""
        return self._remember, {"presented": nonce}

    async def remember(self, engine: AsyncEngine, nonce: str) -> bool:
        """True the first time ``nonce`` is presented, False on every later delivery. (Core on
        a connection of its own, in autocommit: the INSERT is committed before the action runs,
        whatever the action does, and costs no BEGIN and COMMIT round trips.)"""
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            fresh = await self._remember.scalar(connection, {"presented": nonce})
            if draws_sweep():
                await self._sweep_on(connection)  # before the action runs: never fails it
        return fresh is not None

    async def sweep_sometimes(self, engine: AsyncEngine) -> None:
        """After a nonce recorded in an action's own transaction (:class:`DeferredNonce`),
        which does not sweep: one call in SWEEP_ONE_IN deletes the nonces that can no longer
        be presented, on a connection of its own (never holding the action's locks). Never
        raises: a failure is logged."""
        if not draws_sweep():
            return
        try:
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await self._sweep_on(connection)
        except Exception:
            logger.warning("expired nonces were not swept", exc_info=True)

    async def _sweep_on(self, connection: AsyncConnection) -> None:
        """One sweep, in autocommit; a failure only costs this sweep (a later one deletes the
        same rows), and is logged."""
        try:
            await connection.execute(self._sweep)
        except Exception:
            logger.warning("expired nonces were not swept", exc_info=True)


# Where the signature middleware leaves a deferred nonce for the action (the ASGI scope's state).
DEFERRED_NONCE = "rose_deferred_nonce"

# What a replayed signed request is told.
REPLAYED = (
    "Internal request refused: this signed request was replayed (its nonce was used before); "
    "a retry must be signed anew"
)


@dataclass
class DeferredNonce:
    """The nonce of a signed action delivered with an ``Idempotency-Key``, recorded in the
    action's own transaction with the key's claim (apps.common.idempotency): one round trip,
    instead of a connection and round trip of its own before the action. ``committed`` is set
    once that transaction commits; when it does not (the action is refused, rolls back or
    answers a stored response), the middleware records the nonce on its own after the request,
    so every delivery uses its nonce up, as one recorded first does. What differs: a replay
    sent while the first delivery is still running waits for it (the nonce's row is not yet
    committed) and is refused once it commits; if it rolls back, the replay runs, as a retry
    with the same key would (the key's claim rolled back with it)."""

    store: NonceStore
    value: str
    committed: bool = False

    def claim(self) -> Call:
        return self.store.remembering(self.value)
