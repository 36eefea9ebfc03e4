"""Idempotency keys for internal actions.

An action called with an ``Idempotency-Key`` header claims the key in the same transaction as its
effect and stores its response there too. A replay (same key, same payload) returns the stored
response without running the effect again; the same key with another payload is a 422. If the
effect fails, the transaction rolls back and the key is free again, so nothing half-written stays.

Concurrent calls with one key serialise on the key's row: the second ``INSERT ... ON CONFLICT``
waits for the first transaction, then reads its committed response.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.direct import DirectStatement
from apps.common.problems import InvalidInput

MAX_KEY_LENGTH = 200


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
) -> Any:
    """Run ``effect`` at most once per (action, key), then commit. Returns JSON-ready builtins."""
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
    this_key = {"key_action": action, "key_value": key}
    claimed = await statements.claim.first(session, {**this_key, "key_hash": request_hash})
    if claimed is None:
        stored = await statements.stored.first(session, this_key)
        assert stored is not None  # the conflict that refused the claim is this row
        await session.rollback()
        if stored.request_hash != request_hash:
            raise InvalidInput(
                f"Idempotency-Key {key!r} was already used for {action} with another payload",
                field="Idempotency-Key",
            )
        return stored.response
    result = msgspec.to_builtins(await effect())
    await statements.answer.rowcount(session, {**this_key, "key_response": result})
    await session.commit()
    return result
