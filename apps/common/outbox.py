"""A transactional outbox: actions of other services' contracts to call, written in the same
transaction as the change that requires them, delivered later by a relay with retries and
backoff until the other service acknowledges, or refuses it for good (a 4xx that sending it
again cannot change, :attr:`InternalCallError.refused`): such a message is dead (``dead_at``),
logged once as an error, never sent again, and left for a person (``rose_outbox_dead``).

Each message carries an idempotency key (unique), sent as the ``Idempotency-Key`` header, so a
redelivery after a lost acknowledgement is harmless: the receiver replays its stored answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import timedelta
from typing import Any

import msgspec
from litestar.datastructures import State
from prometheus_client import Gauge
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import ColumnElement, Select, Update

from apps.common.contracts import Action
from apps.common.direct import DirectStatement, write_at_commit
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.observability import (
    OUTBOX_DELIVERIES,
    ScrapeHook,
    continued_trace,
    current_traceparent,
    scrape_gauge,
    scrape_row,
)
from apps.common.streaks import FailureStreak

logger = logging.getLogger("rose.outbox")

MAX_BACKOFF_SECONDS = 300

# What a sender does with the receiver's answer, in the transaction that records the delivery:
# ``(session, payload, answer)``, the answer typed as the action's contract says.
ReplyHandler = Callable[[AsyncSession, Mapping[str, Any], Any], Awaitable[None]]
# What a sender does once any message is acknowledged, in the transaction that records the
# delivery: ``(session, message, answer)``, the answer as the receiver sent it (a message that
# must be followed by another, sent only after it: queued there, so that the relay's retries
# never deliver the two out of order).
AcknowledgedHandler = Callable[[AsyncSession, Row[Any], Any], Awaitable[None]]


# The outbox's table name in its service's schema (a backup finds the services that send by it).
OUTBOX = "outbox"


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        OUTBOX,
        metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("service", String(32), nullable=False),
        Column("action", String(64), nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("idempotency_key", String(200), nullable=False, unique=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("next_attempt_at", DateTime(timezone=True), server_default=func.now()),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("last_error", Text, nullable=True),
        # When the receiver refused it for good: never sent again (its next_attempt_at NULL).
        Column("dead_at", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
        # The W3C trace context of the transaction that queued it: its delivery continues that
        # trace (apps/common/observability.py).
        Column("traceparent", String(64), nullable=True),
    )


async def enqueue(
    session: AsyncSession,
    table: Table,
    action: Action[Any, Any],
    request: msgspec.Struct,
    *,
    idempotency_key: str,
) -> bool:
    """Add a call of ``action`` in the caller's transaction; False when that key is already
    queued."""
    queued = await _queue_statement(table).first(
        session, _message(action, request, idempotency_key)
    )
    return queued is not None


async def enqueue_at_commit(
    session: AsyncSession,
    table: Table,
    action: Action[Any, Any],
    request: msgspec.Struct,
    *,
    idempotency_key: str,
) -> None:
    """:func:`enqueue` as a write at commit (apps.common.direct.write_at_commit): the message is
    added with the transaction's COMMIT, in its round trip, whatever commits it; a key already
    queued is left as it is. For a message nothing in the transaction reads after it (inside
    a savepoint it is added now)."""
    await write_at_commit(
        session, _queue_statement(table), _message(action, request, idempotency_key)
    )


def _message(
    action: Action[Any, Any], request: msgspec.Struct, idempotency_key: str
) -> dict[str, Any]:
    if not isinstance(request, action.request):
        raise TypeError(f"{action.name} takes {action.request.__name__}, not {request!r}")
    return {
        "message_service": action.service,
        "message_action": action.name,
        "message_payload": msgspec.to_builtins(request),
        "message_key": idempotency_key,
        "message_trace": current_traceparent(),
    }


@functools.cache
def _queue_statement(table: Table) -> DirectStatement:
    """The INSERT of :func:`enqueue` for ``table``, built once and run directly on the session's
    connection (apps.common.direct): every paid order queues messages."""
    return DirectStatement(
        insert(table)
        .values(
            service=bindparam("message_service"),
            action=bindparam("message_action"),
            payload=bindparam("message_payload", type_=table.c.payload.type),
            idempotency_key=bindparam("message_key"),
            traceparent=bindparam("message_trace", type_=table.c.traceparent.type),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(table.c.id)
    )


@functools.cache
def _backlog_gauges() -> tuple[Gauge, Gauge, Gauge]:
    """The backlog's gauges, made (registered) by the first service that has an outbox: made at
    import, every service exported them, and those without an outbox said
    ``rose_outbox_backlog 0`` to an alert ("healthy" with nothing to deliver)."""
    return (
        scrape_gauge("rose_outbox_backlog", "Outbox messages not yet delivered"),
        scrape_gauge(
            "rose_outbox_oldest_age_seconds",
            "Age of the oldest outbox message not yet delivered (0: none)",
        ),
        scrape_gauge(
            "rose_outbox_dead", "Outbox messages their receiver refused for good: never sent again"
        ),
    )


def backlog_metrics(table: Table) -> ScrapeHook:
    """A scrape hook: the outbox backlog (dead messages apart) and its oldest message's age, and
    the dead messages, read when scraped."""
    waiting = table.c.delivered_at.is_(None) & table.c.dead_at.is_(None)
    backlog, oldest_age, dead_count = _backlog_gauges()

    async def scrape(state: State) -> None:
        count, oldest, dead = await scrape_row(
            state,
            select(
                func.count().filter(waiting),
                func.coalesce(
                    func.extract(
                        "epoch", func.now() - func.min(table.c.created_at).filter(waiting)
                    ),
                    0,
                ),
                func.count().filter(table.c.dead_at.is_not(None)),
            ).where(table.c.delivered_at.is_(None)),
        )
        backlog.set(count)
        oldest_age.set(float(oldest))
        dead_count.set(dead)

    return scrape


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


@functools.cache
def next_due(table: Table) -> Select[Any]:
    """The next due message of ``table``'s outbox, and whether another one is due after it (the
    second row, locked but left for the next transaction); locked rows are skipped."""
    return (
        select(table)
        .where(
            table.c.delivered_at.is_(None),
            table.c.dead_at.is_(None),
            table.c.next_attempt_at <= func.now(),
        )
        .order_by(table.c.id)
        .limit(2)
        .with_for_update(skip_locked=True)
    )


def dead_messages(table: Table) -> Select[Any]:
    """Every dead message of ``table``'s outbox, oldest first: what a person decides on."""
    return (
        select(
            table.c.id,
            table.c.service,
            table.c.action,
            table.c.attempts,
            table.c.dead_at,
            table.c.last_error,
            table.c.payload,
        )
        .where(table.c.dead_at.is_not(None))
        .order_by(table.c.id)
    )


def messages_among(table: Table, ids: Collection[int]) -> Select[Any]:
    """Which of ``ids`` are messages of ``table``'s outbox, delivered or dead, their rows locked
    (a resend decides on them all, then changes them)."""
    return (
        select(table.c.id, table.c.delivered_at.is_not(None), table.c.dead_at.is_not(None))
        .where(table.c.id.in_(list(ids)))
        .order_by(table.c.id)
        .with_for_update()
    )


def resend_dead(table: Table, ids: Collection[int] | None = None) -> Update:
    """Make the dead messages among ``ids`` (None: every one) due again, as :func:`next_due`
    selects them: not dead, due now, and their attempts counted from nought, so a failure is
    retried with the backoff of a first one. Returns their ids. The last error stays until the
    message is delivered (what it died of, for whoever looks next)."""
    chosen = table.c.dead_at.is_not(None) & table.c.delivered_at.is_(None)
    if ids is not None:
        chosen &= table.c.id.in_(list(ids))
    return (
        update(table)
        .where(chosen)
        .values(dead_at=None, attempts=0, next_attempt_at=func.now())
        .returning(table.c.id)
    )


class OutboxRelay:
    """Delivers due messages. ``wake()`` after a commit that queued messages; otherwise it polls.

    Each message is delivered in its own transaction holding the row lock (``FOR UPDATE SKIP
    LOCKED``), so several processes can relay one outbox without delivering a message twice
    at once. A reply handler registered for the message's action sees the receiver's answer
    in the transaction that records the delivery (an answer that needs acting on is never
    just logged); ``acknowledged`` sees every acknowledged message there (a sender that queues
    a message only once another was delivered)."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        table: Table,
        *,
        poll_seconds: float = 2.0,
        batch: int = 20,
        client: InternalClient,
        replies: Mapping[Action[Any, Any], ReplyHandler] | None = None,
        acknowledged: AcknowledgedHandler | None = None,
    ) -> None:
        self._maker = maker
        self._table = table
        self._client = client
        self._replies = {
            (action.service, action.name): (action, handler)
            for action, handler in (replies or {}).items()
        }
        self._acknowledged = acknowledged
        self._poll = poll_seconds
        self._batch = batch
        self.failures = FailureStreak(logger, "outbox relay pass")
        # Built once (see _queue_statement). The next due message, and whether another one is
        # due after it (the second row, locked but left for the next transaction): a pass that
        # delivers the last due message ends without a transaction that finds nothing.
        self._next_due = DirectStatement(next_due(table))
        self._delivered = DirectStatement(
            update(table)
            .where(table.c.id == bindparam("message_id"))
            .values(
                delivered_at=func.now(), attempts=bindparam("message_attempts"), last_error=None
            )
        )
        self._wakeup = asyncio.Event()
        # Whether the last pass found nothing more due.
        self._drained = False
        self._task: asyncio.Task[None] | None = None
        # deliver_now's deliveries that outlived their caller's wait.
        self._now: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        for task in [*self._now, *([self._task] if self._task is not None else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                delivered = await self.deliver_due()
                self.failures.succeeded()
            except Exception as exc:  # the relay must outlive any single failure
                self.failures.failed(exc)
                delivered = 0
            # More may be due only when a batch ended full (an empty search costs a transaction).
            if delivered and not self._drained:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll)
            self._wakeup.clear()

    async def deliver_due(self) -> int:
        """Deliver what is due now; returns how many messages were acknowledged."""
        acknowledged = 0
        self._drained = False
        more_due = True
        for _ in range(self._batch):
            if not more_due:
                self._drained = True
                return acknowledged
            async with self._maker() as session, session.begin():
                due = await self._next_due.rows(session)
                if not due:
                    self._drained = True
                    return acknowledged
                message, more_due = due[0], len(due) > 1
                if await self._deliver(session, message):
                    acknowledged += 1
        return acknowledged

    async def _deliver(self, session: AsyncSession, message: Row[Any]) -> bool:
        """Call the message's action, in ``session``'s transaction, which holds the message's row
        lock: the delivery recorded (and the reply handled), or the failure and its backoff.
        True when the receiver acknowledged."""
        table = self._table
        try:
            # The delivery continues the trace of the transaction that queued it.
            with continued_trace(
                message.traceparent,
                f"outbox {message.service}.{message.action}",
                outbox_id=message.id,
            ):
                answer = await self._client.call_action(
                    message.service,
                    message.action,
                    message.payload,
                    idempotency_key=message.idempotency_key,
                )
        except InternalCallError as exc:
            attempts = message.attempts + 1
            if exc.refused:
                await self._refused(session, message, attempts, exc)
                return False
            OUTBOX_DELIVERIES.labels(message.service, "failed").inc()
            logger.warning(
                "outbox %s %s.%s failed (attempt %d): %s",
                message.id,
                message.service,
                message.action,
                attempts,
                exc,
            )
            await session.execute(
                update(table)
                .where(table.c.id == message.id)
                .values(
                    attempts=attempts,
                    last_error=str(exc)[:2000],
                    next_attempt_at=func.now() + backoff(attempts),
                )
            )
            return False
        reply = self._replies.get((message.service, message.action))
        if reply is not None:
            action, handle = reply
            await handle(session, message.payload, msgspec.convert(answer, action.answer))
        if self._acknowledged is not None:
            await self._acknowledged(session, message, answer)
        # With the COMMIT, in its round trip: a delivery is recorded only if all of it commits.
        await write_at_commit(
            session,
            self._delivered,
            {"message_id": message.id, "message_attempts": message.attempts + 1},
        )
        OUTBOX_DELIVERIES.labels(message.service, "delivered").inc()
        return True

    async def _refused(
        self, session: AsyncSession, message: Row[Any], attempts: int, exc: InternalCallError
    ) -> None:
        """The receiver refused the message for good (sent again, it would answer the same, and
        a sender waiting for it, a later change of the same relation, would wait for ever): it
        is dead, never sent again, logged once for a person to decide on."""
        OUTBOX_DELIVERIES.labels(message.service, "dead").inc()
        logger.error(
            "outbox %s %s.%s refused for good (attempt %d), not sent again: %s; its payload: %s",
            message.id,
            message.service,
            message.action,
            attempts,
            exc,
            msgspec.json.encode(message.payload).decode(),
        )
        table = self._table
        await session.execute(
            update(table)
            .where(table.c.id == message.id)
            .values(
                attempts=attempts,
                last_error=str(exc)[:2000],
                dead_at=func.now(),
                next_attempt_at=None,
            )
        )

    def _due_among(
        self, keys: Collection[str], whatever_backoff: bool = False
    ) -> ColumnElement[bool]:
        table = self._table
        among = (
            table.c.idempotency_key.in_(list(keys))
            & table.c.delivered_at.is_(None)
            & table.c.dead_at.is_(None)
        )
        return among if whatever_backoff else among & (table.c.next_attempt_at <= func.now())

    async def deliver_now(
        self, keys: Collection[str], *, within: float, whatever_backoff: bool = False
    ) -> bool:
        """Deliver now the due messages among ``keys``, for a page about to show their effect
        (orders' return page: the cart the payment clears). The relay's own delivery, one
        message a transaction holding its row lock; a message being delivered elsewhere at that
        moment (this relay's loop, another process) is waited for, not skipped. The caller
        waits at most ``within`` seconds: a delivery still going on then finishes in the
        background (never cut half way), and a failed one is retried by the relay with its
        backoff, as any other. True when some of them were due (what they change may have
        changed), or may have been: the wait ended before that was known (the pool's
        connections all busy). ``whatever_backoff``: those still in their backoff too."""
        if not keys:
            return False
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        due = exists().where(self._due_among(keys, whatever_backoff))
        try:
            # A connection of the pool is waited for within the same bound.
            async with asyncio.timeout_at(until), self._maker() as session:
                if not await session.scalar(select(due)):
                    return False
        except TimeoutError:
            return True
        task = asyncio.create_task(
            self._deliver_keys(keys, whatever_backoff), name="outbox-deliver-now"
        )
        self._now.add(task)
        task.add_done_callback(self._now.discard)
        await asyncio.wait({task}, timeout=max(until - loop.time(), 0))
        return True

    async def _deliver_keys(self, keys: Collection[str], whatever_backoff: bool) -> None:
        table = self._table
        # FOR UPDATE without SKIP LOCKED: a message another transaction is delivering is waited
        # for, then left out if that delivery recorded it (or pushed it back after a failure).
        # Each message once here: one that failed is the relay's to retry.
        tried: list[int] = []
        try:
            for _ in keys:
                next_among = (
                    select(table)
                    .where(self._due_among(keys, whatever_backoff), table.c.id.not_in(tried))
                    .order_by(table.c.id)
                    .limit(1)
                    .with_for_update()
                )
                async with self._maker() as session, session.begin():
                    message = (await session.execute(next_among)).first()
                    if message is None:
                        return
                    tried.append(message.id)
                    await self._deliver(session, message)
        except Exception:  # the relay delivers it later; nobody awaits this task's result
            logger.exception("outbox: delivering %s now failed", ", ".join(keys))
