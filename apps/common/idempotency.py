"""Idempotency keys for internal actions.

An action called with an ``Idempotency-Key`` header claims the key in the same transaction as its
effect and stores its response there too. A replay (same key, same payload) returns the stored
response without running the effect again; the same key with another payload is a 422. If the
effect fails, the transaction rolls back and the key is free again, so nothing half-written stays.

An action whose answer can go stale passes ``replay``: it gets the stored response and answers
the current one, or None when what the key stood for is gone (an order that can no longer be
paid). The key is then taken over by one request, which runs the effect again and stores its
answer in place of the old one.

Concurrent calls with one key serialise on the key's row: the second ``INSERT ... ON CONFLICT``
(or take-over ``UPDATE``) waits for the first transaction, then reads its committed response.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.direct import DirectStatement, run_together, write_at_commit
from apps.common.nonces import REPLAYED, DeferredNonce
from apps.common.problems import Conflict, InvalidInput

MAX_KEY_LENGTH = 200

logger = logging.getLogger("rose.idempotency")


def idempotency_table(metadata: MetaData) -> Table:
    """The ``idempotency_keys`` table of a service, in that service's schema."""
    return Table(
        "idempotency_keys",
        metadata,
        Column("action", String(64), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("response", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    )


@dataclass(frozen=True)
class _KeyStatements:
    claim: DirectStatement
    stored: DirectStatement
    answer: DirectStatement
    take_over: DirectStatement


@functools.cache
def _statements(table: Table) -> _KeyStatements:
    """The statements of one idempotency table, built once and run directly on the session's
    connection: every keyed action runs two of them (apps.common.direct)."""
    this_key = (table.c.action == bindparam("key_action")) & (table.c.key == bindparam("key_value"))
    return _KeyStatements(
        # Claim the key with an empty response; the real one is written before commit.
        claim=DirectStatement(
            insert(table)
            .values(
                action=bindparam("key_action"),
                key=bindparam("key_value"),
                request_hash=bindparam("key_hash"),
                response={},
            )
            .on_conflict_do_nothing(index_elements=["action", "key"])
            .returning(table.c.key)
        ),
        stored=DirectStatement(select(table.c.request_hash, table.c.response).where(this_key)),
        answer=DirectStatement(
            table.update()
            .where(this_key)
            .values(response=bindparam("key_response", type_=table.c.response.type))
        ),
        # Only while the key still holds the response the caller found dead: of concurrent
        # callers one takes it over, the others wait on its row and then find its new answer.
        take_over=DirectStatement(
            table.update()
            .where(
                this_key,
                table.c.request_hash == bindparam("key_hash"),
                table.c.response == bindparam("key_stale", type_=table.c.response.type),
            )
            .values(created_at=func.now())
        ),
    )


def payload_hash(payload: Any) -> str:
    canonical = msgspec.json.encode(msgspec.to_builtins(payload), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


async def run_idempotent(
    session: AsyncSession,
    table: Table,
    *,
    action: str,
    key: str | None,
    payload: Any,
    effect: Callable[[], Awaitable[Any]],
    replay: Callable[[Any], Awaitable[Any | None]] | None = None,
    nonce: DeferredNonce | None = None,
) -> Any:
    """Run ``effect`` at most once per (action, key), then commit. Returns JSON-ready builtins.
    With ``replay``, once more each time the stored answer is dead (``replay`` answered None).
    A ``nonce`` the signature middleware deferred is recorded with the key's first claim, in
    its round trip; a nonce used before refuses the request (409) before anything runs."""
    if key is None:
        result = msgspec.to_builtins(await effect())
        await session.commit()
        return result
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", field="Idempotency-Key"
        )
    request_hash = payload_hash(payload)
    statements = _statements(table)
    this_key = {"key_action": action, "key_value": key, "key_hash": request_hash}
    try:
        # A second round only when another request took the key over first: its answer is new.
        for _ in range(3):
            if await _claim(session, statements, this_key, nonce):
                return await _run_and_store(session, statements, this_key, effect, nonce)
            stored = await statements.stored.first(session, this_key)
            assert stored is not None  # the conflict that refused the claim is this row
            if stored.request_hash != request_hash:
                await session.rollback()
                raise InvalidInput(
                    f"Idempotency-Key {key!r} was already used for {action} with another payload",
                    field="Idempotency-Key",
                )
            if replay is None:
                await session.rollback()
                return stored.response
            try:
                current = await replay(stored.response)
            except BaseException:
                await session.rollback()
                raise
            if current is not None:
                await session.rollback()
                return msgspec.to_builtins(current)
            taken = await statements.take_over.rowcount(
                session, {**this_key, "key_stale": stored.response}
            )
            if taken:
                return await _run_and_store(session, statements, this_key, effect, nonce)
            await session.rollback()
        raise Conflict(f"Idempotency-Key {key!r} is in use by {action}; try again")
    except BaseException:
        if nonce is not None:
            # Ended now, not when the request's session closes: the middleware then records
            # the nonce on a connection of its own, which this transaction's row would block.
            await _roll_back_quietly(session)
        raise


async def _claim(
    session: AsyncSession,
    statements: _KeyStatements,
    this_key: dict[str, Any],
    nonce: DeferredNonce | None,
) -> bool:
    """Whether this request claimed the key; with the deferred ``nonce`` in the same round
    trip, refused as a replay when the nonce was used before."""
    if nonce is None:
        return await statements.claim.first(session, this_key) is not None
    fresh, claimed = await run_together(session, nonce.claim(), (statements.claim, this_key))
    if not fresh:
        raise Conflict(REPLAYED)  # rolled back by run_idempotent
    return bool(claimed)


async def _roll_back_quietly(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception:  # a lost connection has nothing left to roll back
        logger.debug("the failed action's rollback failed", exc_info=True)


async def _run_and_store(
    session: AsyncSession,
    statements: _KeyStatements,
    this_key: dict[str, Any],
    effect: Callable[[], Awaitable[Any]],
    nonce: DeferredNonce | None,
) -> Any:
    result = msgspec.to_builtins(await effect())
    # The answer goes with the COMMIT (one round trip): the effect's own writes at commit too.
    await write_at_commit(session, statements.answer, {**this_key, "key_response": result})
    await session.commit()
    if nonce is not None:
        nonce.committed = True  # recorded with the claim, now committed
    return result
