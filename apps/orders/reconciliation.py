"""The periodic reconciliation of orders with SumUp, and closing replaced orders' checkouts.

Webhooks can be lost for good, so every pass re-asks SumUp about everything that can still
change, in this order:
1. pending orders whose payable time has passed: their checkouts are closed at SumUp (a
   checkout SumUp already processed is applied as paid), then the order expires;
2. every pending order with an open checkout, least recently checked first, all of them in
   batches (a backlog of junk orders cannot push a real one past the end of the pass);
3. orders that can no longer be paid (superseded, expired, cancelled) whose checkout may still
   be open at SumUp: closed now (money that still arrived becomes a refund); those older than
   RECONCILE_WINDOW (legacy ones the split moved open) a bounded batch a pass;
4. refunds due or whose outcome is unknown.

One pass runs at a time across every orders process (a PostgreSQL advisory lock); the others
skip their turn. After the pass at a process's start-up, the periodic loop also skips when
another process started a pass less than (most of) an interval ago, so N processes make one
pass per interval, not N; each pass is a row of ``reconciliation_passes``. The processes take
the passes in turns: each sleeps until an interval after the latest pass, and the one that ran
it a little longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from litestar.datastructures import State
from sqlalchemy import exists, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from apps.common.observability import scrape_gauge, scrape_row
from apps.common.streaks import FailureStreak
from apps.events import contract as events
from apps.orders.models import (
    CLOSED_UNPAID_STATES,
    Order,
    PaymentAttempt,
    ReconciliationPass,
    Refund,
)
from apps.orders.payments import CheckoutStatusUnknown, PaymentProviderUnavailable, sumup_waits
from apps.orders.runtime import OrdersRuntime
from apps.orders.service import give_back_holds_key, load_order, recheck
from apps.orders.settlement import (
    OPEN_ATTEMPT_STATES,
    Applied,
    MerchantAccounts,
    MerchantKeyGone,
    close_attempt,
    close_order_checkouts,
    enqueue_give_back,
    enqueue_release_of_bookings,
    open_attempts,
    refunds_to_settle,
    settle_refund,
)

logger = logging.getLogger("rose.orders.reconcile")

# A hold events made this long ago for an order orders does not have is one for an order that
# never will be (create-order commits within seconds: its calls' deadlines, statement timeouts).
HOLDS_SETTLED = timedelta(minutes=5)
# A checkout that has not settled in this long never will: it is no longer asked about.
RECONCILE_WINDOW = timedelta(days=14)
PASS_LOCK = "orders-reconciliation-pass"


PENDING_ORDERS = scrape_gauge("rose_orders_pending", "Orders waiting for their payment")
RECONCILIATION_LAG = scrape_gauge(
    "rose_orders_reconciliation_lag_seconds",
    "Seconds since the last reconciliation pass finished (-1: none has yet)",
)


def _listed(ids: list[int], shown: int = 20) -> str:
    """Order ids for a log line, bounded: a long outage may leave thousands open."""
    listed = ", ".join(str(each) for each in ids[:shown])
    return listed if len(ids) <= shown else f"{listed} and {len(ids) - shown} more"


@dataclass
class WaitingOnSumUp:
    """What a pass leaves because SumUp did not answer (down or slow), or refused a merchant's
    key (revoked in its dashboard: every one of its orders alike): what the code expects, said
    once for them all (:meth:`warn`), without a traceback or a line for each. ``of`` is what
    the ids are, orders or refunds."""

    of: str
    unanswered: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    # Checkouts SumUp reports in a status orders does not know: each its own answer.
    unsettled: dict[int, str] = field(default_factory=dict)

    def waits(self, item_id: int, exc: BaseException) -> bool:
        """Whether ``exc`` is SumUp's to wait out; if so, ``item_id`` is kept for the warning."""
        said = sumup_waits(exc)
        if said is None:
            return False
        if isinstance(exc, CheckoutStatusUnknown):
            self.unsettled[item_id] = said
        elif isinstance(exc, PaymentProviderUnavailable):
            self.unanswered[item_id] = said
        else:
            self.refused[item_id] = said
        return True

    async def warn(self, maker: Callable[[], AsyncSession]) -> None:
        if self.unanswered:
            # Their answers are alike (one outage): the first of them says what it was.
            await self._warn(maker, self.unanswered[min(self.unanswered)], self.unanswered)
        for item_id, said in sorted(self.unsettled.items()):  # few, and each its own
            await self._warn(maker, said, [item_id])
        if self.refused:
            # A key is a merchant's: one warning per merchant, naming it and its orders (a
            # person gives that merchant's page a new key), each with its first answer.
            merchants = await self._merchants(maker, self.refused)
            by_merchant: dict[str, list[int]] = {}
            for item_id in sorted(self.refused):
                merchant = merchants.get(item_id, (0, None))[1] or "(none)"
                by_merchant.setdefault(merchant, []).append(item_id)
            for merchant, item_ids in sorted(by_merchant.items()):
                said = f"merchant {merchant}: {self.refused[item_ids[0]]}"
                await self._warn(maker, said, item_ids)

    async def _warn(self, maker: Callable[[], AsyncSession], said: str, ids: Iterable[int]) -> None:
        item_ids = sorted(ids)
        if self.of == "orders":
            logger.warning(
                "%s; %d orders left for the next reconciliation pass: %s",
                said,
                len(item_ids),
                _listed(item_ids),
            )
            return
        orders = await self._merchants(maker, item_ids)
        order_ids = sorted({orders[item][0] for item in item_ids if item in orders})
        logger.warning(
            "%s; %d %s left for the next reconciliation pass, of orders %s",
            said,
            len(item_ids),
            self.of,
            _listed(order_ids) if order_ids else f"unknown ({self.of} {_listed(item_ids)})",
        )

    async def _merchants(
        self, maker: Callable[[], AsyncSession], ids: Iterable[int]
    ) -> dict[int, tuple[int, str | None]]:
        """Each id's order and that order's merchant; none when the database cannot say (the
        warning then names the ids alone, and the pass goes on)."""
        wanted = sorted(ids)
        if self.of == "orders":
            query = select(Order.id, Order.id, Order.merchant_code).where(Order.id.in_(wanted))
        else:
            query = (
                select(Refund.id, Refund.order_id, Order.merchant_code)
                .join(Order, Order.id == Refund.order_id)
                .where(Refund.id.in_(wanted))
            )
        try:
            async with maker() as session:
                rows = await session.execute(query)
                return {item: (order_id, merchant) for item, order_id, merchant in rows}
        except Exception:
            logger.warning("the %s waiting on SumUp could not be read back", self.of, exc_info=True)
            return {}


async def reconciliation_metrics(state: State) -> None:
    """A scrape hook: pending orders and the reconciliation lag, read when scraped."""
    pending, lag = await scrape_row(
        state,
        select(
            select(func.count())
            .select_from(Order)
            .where(Order.status == "pending")
            .scalar_subquery(),
            select(
                func.coalesce(
                    func.extract("epoch", func.now() - func.max(ReconciliationPass.finished_at)),
                    -1,
                )
            ).scalar_subquery(),
        ),
    )
    PENDING_ORDERS.set(pending)
    RECONCILIATION_LAG.set(float(lag))


@dataclass
class PassReport:
    skipped: bool = False
    expired: list[int] = field(default_factory=list)
    # An expired order's bookings are to be released (an outbox message the relay delivers).
    releasing: bool = False
    checked: int = 0
    paid: list[int] = field(default_factory=list)
    closed: int = 0
    refunds: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    # Orders whose SumUp merchant has no key in their page config any more: left as they are
    # (what SumUp did is unknown), warned about once a pass, listed by `rose orders attention`.
    keyless: set[int] = field(default_factory=set)
    # Orders never made whose holds at events were given back (give_back_holds_of_...).
    given_back: int = 0


class Reconciler:
    def __init__(self, runtime: OrdersRuntime, *, process: str | None = None) -> None:
        self._runtime = runtime
        # What the passes table names this process by.
        self._process = process or f"{socket.gethostname()}:{os.getpid()}"
        self._background: set[asyncio.Task[None]] = set()
        # Set once the pass at start-up has ended (made, skipped or failed): until then it
        # may hold rows that work handed over after a commit skips (``SKIP LOCKED``).
        self.started_up = asyncio.Event()
        # Where the bounded walk over checkouts older than RECONCILE_WINDOW goes on from (an
        # order id; see ``closing_orders``).
        self._old_after = 0

    # -- the pass ------------------------------------------------------------------------
    async def run_once(self, *, min_interval: float = 0.0) -> PassReport:
        """One pass now, unless another process runs one, or (``min_interval`` > 0) started
        one less than ``min_interval`` seconds ago."""
        engine = self._runtime.maker.kw["bind"]
        async with engine.connect() as lock_connection:
            # Autocommit: the lock is the session's, and nothing waits idle in a transaction.
            await lock_connection.execution_options(isolation_level="AUTOCOMMIT")
            locked = await lock_connection.scalar(
                text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))"),
                {"key": PASS_LOCK},
            )
            if not locked:
                return PassReport(skipped=True)
            try:
                if min_interval > 0:
                    latest = await self._latest_pass()
                    if latest is not None and latest[0] < min_interval:
                        return PassReport(skipped=True)
                pass_id = await self._pass_started()
                report = await self._pass()
                await self._pass_finished(pass_id, report)
                return report
            finally:
                await lock_connection.execute(
                    text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"),
                    {"key": PASS_LOCK},
                )

    # The passes table, written in sessions of their own (the lock's connection only locks).
    async def _latest_pass(self) -> tuple[float, str] | None:
        """Seconds since the latest pass started, and the process that ran it."""
        async with self._runtime.maker() as session:
            latest = (
                await session.execute(
                    select(
                        func.extract("epoch", func.now() - ReconciliationPass.started_at),
                        ReconciliationPass.process,
                    )
                    # The pass lock serialises passes: the latest id is the latest started.
                    .order_by(ReconciliationPass.id.desc())
                    .limit(1)
                )
            ).first()
        return None if latest is None else (float(latest[0]), latest[1])

    async def _pass_started(self) -> int:
        async with self._runtime.maker() as session, session.begin():
            started = await session.execute(
                insert(ReconciliationPass)
                .values(process=self._process)
                .returning(ReconciliationPass.id)
            )
            pass_id: int = started.scalar_one()
        return pass_id

    async def _pass_finished(self, pass_id: int, report: PassReport) -> None:
        async with self._runtime.maker() as session, session.begin():
            await session.execute(
                update(ReconciliationPass)
                .where(ReconciliationPass.id == pass_id)
                .values(
                    finished_at=func.now(),
                    checked=report.checked,
                    paid=len(report.paid),
                    failures=report.failures,
                )
            )

    async def _pass(self) -> PassReport:
        report = PassReport()
        accounts = MerchantAccounts()
        gateway = self._runtime.gateway

        async def expire(session: AsyncSession, order_id: int) -> None:
            order = await session.get(Order, order_id, with_for_update={"skip_locked": True})
            if order is None or order.status != "pending":
                return
            for attempt in await open_attempts(session, order_id):
                applied = await close_attempt(session, order, attempt, gateway, accounts)
                if applied.paid:
                    report.paid.append(order_id)
                    return
                if applied.flagged:  # left to a person, who settles it (end-review)
                    return
            expired = await session.scalar(
                update(Order)
                .where(Order.id == order_id, Order.status == "pending")
                .values(status="expired", updated_at=func.now())
                .returning(Order.id)
            )
            if expired is not None:
                report.expired.append(order_id)
                if await enqueue_release_of_bookings(session, order_id):
                    report.releasing = True

        async def check(session: AsyncSession, order_id: int) -> None:
            order = await load_order(session, order_id)
            if order is None or order.status != "pending" or order.current_attempt is None:
                return
            attempt_id = order.current_attempt.id
            applied = await recheck(session, order, self._runtime, accounts)
            # After the recheck, which locks the order before the attempt (settlement's one
            # order of locks): marking the attempt first held it across the SumUp call, and
            # then waited on the order.
            await session.execute(
                update(PaymentAttempt)
                .where(PaymentAttempt.id == attempt_id)
                .values(checked_at=func.now())
            )
            report.checked += 1
            if applied is not None and applied.paid:
                report.paid.append(order_id)

        async def close(session: AsyncSession, order_id: int) -> None:
            outcomes = await close_order_checkouts(session, order_id, gateway, accounts)
            report.closed += len(outcomes)

        async with self._runtime.maker() as session:
            overdue = await self.overdue_orders(session)
        report.failures += await self._each(overdue, expire, report.keyless)
        async with self._runtime.maker() as session:
            due = await self.due_orders(session)
        report.failures += await self._each(due, check, report.keyless)
        async with self._runtime.maker() as session:
            closing = await self.closing_orders(session)
        report.failures += await self._each(closing, close, report.keyless)
        report.given_back += await self.give_back_holds_of_orders_never_made()
        refunds = await self.settle_refunds(report, accounts)
        if report.paid or report.releasing or report.given_back:
            self._runtime.relay.wake()
        if overdue or due or closing or refunds:
            logger.info(
                "reconciled: %d expired, %d checked, %d paid, %d checkouts closed, refunds %s, "
                "%d failed, %d waiting for their merchant's key",
                len(report.expired),
                report.checked,
                len(report.paid),
                report.closed,
                report.refunds,
                report.failures,
                len(report.keyless),
            )
        return report

    async def settle_refunds(
        self, report: PassReport | None = None, accounts: MerchantAccounts | None = None
    ) -> list[int]:
        report = report or PassReport()
        # A requested refund whose call may still be on its way is left alone this long.
        lease = timedelta(seconds=3 * self._runtime.settings.sumup_timeout)
        async with self._runtime.maker() as session:
            refunds = await refunds_to_settle(session)
        waiting = WaitingOnSumUp("refunds")
        for refund_id in refunds:
            async with self._runtime.maker() as session:
                try:
                    outcome = await settle_refund(
                        session, refund_id, self._runtime.gateway, lease, accounts
                    )
                except MerchantKeyGone as exc:
                    # Stays due (the order is listed for a person) until the key is back.
                    if exc.order_id not in report.keyless:
                        report.keyless.add(exc.order_id)
                        logger.warning("refund %s waits: %s", refund_id, exc.note)
                    continue
                except Exception as exc:  # one refund's trouble must not stop the others
                    if not waiting.waits(refund_id, exc):  # else tried next pass
                        logger.exception("refund %s could not be settled", refund_id)
                    report.failures += 1
                    continue
            if outcome is not None:
                report.refunds[outcome.status] = report.refunds.get(outcome.status, 0) + 1
        await waiting.warn(self._runtime.maker)
        return refunds

    async def give_back_holds_of_orders_never_made(self) -> int:
        """Bookings events holds for an order orders never made are given back (release-for-
        order, ``rolled_back``: to the holds they had before, the buyer's cart's). Create-order
        holds them before its order is committed, and gives them back itself when it fails; a
        process killed in between left them held until the order's payable time and 30
        minutes more, every other buyer refused (probe). Only holds made HOLDS_SETTLED ago are
        asked about: an order being made is committed well within it, or never. Events not
        answering (or an events without the query, mid-deploy) is tried again next pass.
        How many were given back."""
        if not self._runtime.client.knows(events.SERVICE):
            return 0  # a deployment without events: no holds to give back
        never_made: list[int] = []
        after = 0
        while True:  # a page at a time: a rush's live orders must not hide one after them
            try:
                holding = await self._runtime.client.query(
                    events.orders_holding,
                    events.HeldBefore(seconds=int(HOLDS_SETTLED.total_seconds()), after=after),
                    timeout=self._runtime.settings.events_timeout,
                )
            except Exception as exc:  # events down or older: tried again next pass
                logger.warning("which orders hold bookings at events is unknown this pass: %s", exc)
                break
            if not holding:
                break
            async with self._runtime.maker() as session, session.begin():
                made = set(await session.scalars(select(Order.id).where(Order.id.in_(holding))))
                gone = [order_id for order_id in holding if order_id not in made]
                for order_id in gone:
                    await enqueue_give_back(session, order_id, give_back_holds_key(order_id))
            never_made += gone
            after = max(holding)  # until an empty answer: events says how much one holds
        if never_made:
            logger.warning(
                "events held bookings for %d order(s) orders never made (a create-order cut "
                "off before its commit): given back: %s",
                len(never_made),
                _listed(never_made),
            )
        return len(never_made)

    def settle_refunds_soon(self) -> None:
        """Money found owed (a late payment) goes back without waiting for the next pass."""
        self._spawn(self.settle_refunds(), "orders-settle-refunds")

    def _spawn(self, work: Awaitable[object], name: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("%s failed; the next reconciliation pass retries", name)

        task = asyncio.create_task(run(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _each(
        self,
        ids: Iterable[int],
        work: Callable[[AsyncSession, int], Awaitable[None]],
        keyless: set[int],
    ) -> int:
        """Run ``work`` for each id, each in its own transaction, a bounded number at once.
        Returns how many failed (logged; they are tried again next pass). An order whose
        merchant has no key any more is not a failure: it waits, warned about once a pass
        (added to ``keyless``)."""
        limit = asyncio.Semaphore(self._runtime.settings.reconcile_concurrency)
        failures = 0
        waiting = WaitingOnSumUp("orders")

        async def one(order_id: int) -> None:
            nonlocal failures
            async with limit, self._runtime.maker() as session:
                try:
                    await work(session, order_id)
                    await session.commit()
                except MerchantKeyGone as exc:
                    await session.rollback()
                    if order_id not in keyless:
                        keyless.add(order_id)
                        logger.warning("%s", exc.note)
                except Exception as exc:  # one order's trouble must not stop the others
                    if waiting.waits(order_id, exc):
                        await session.rollback()
                    else:
                        logger.exception("reconciling order %s failed", order_id)
                    failures += 1

        batch = self._runtime.settings.reconcile_batch
        ordered = list(ids)
        for start in range(0, len(ordered), batch):
            await asyncio.gather(*(one(order_id) for order_id in ordered[start : start + batch]))
        await waiting.warn(self._runtime.maker)
        return failures

    async def overdue_orders(self, session: AsyncSession) -> list[int]:
        return list(
            await session.scalars(
                select(Order.id)
                .where(
                    Order.status == "pending",
                    Order.flagged.is_(False),
                    Order.payable_until <= func.now(),
                )
                .order_by(Order.payable_until, Order.id)
            )
        )

    async def due_orders(self, session: AsyncSession) -> list[int]:
        """Pending orders whose current attempt may still change at SumUp (PENDING, or FAILED
        and retried on the hosted page), least recently checked first: all of them."""
        later = aliased(PaymentAttempt)
        return list(
            await session.scalars(
                select(Order.id)
                .join(PaymentAttempt, PaymentAttempt.order_id == Order.id)
                .where(
                    Order.status == "pending",
                    Order.flagged.is_(False),
                    PaymentAttempt.status.in_(OPEN_ATTEMPT_STATES),
                    PaymentAttempt.created_at > func.now() - RECONCILE_WINDOW,
                    ~exists().where(
                        later.order_id == Order.id, later.number > PaymentAttempt.number
                    ),
                )
                .order_by(PaymentAttempt.checked_at.asc().nulls_first(), Order.id)
            )
        )

    async def closing_orders(self, session: AsyncSession) -> list[int]:
        """Orders that can no longer be paid with a checkout open: every one made within
        RECONCILE_WINDOW, and one batch (``reconcile_batch``) of older ones a pass, by order id
        from where the last pass stopped. The older ones are orders moved from the monolith
        (a cancelled one moves with its checkout open, db/split/orders.sql): a buyer's tab
        could still pay it. Walked on, not oldest first, so that one that cannot be closed
        (SumUp down for its merchant, its key gone) does not hold up the others."""
        open_since = exists().where(
            PaymentAttempt.order_id == Order.id,
            PaymentAttempt.status.in_(OPEN_ATTEMPT_STATES),
            PaymentAttempt.created_at > func.now() - RECONCILE_WINDOW,
        )
        open_before = exists().where(
            PaymentAttempt.order_id == Order.id,
            PaymentAttempt.status.in_(OPEN_ATTEMPT_STATES),
            PaymentAttempt.created_at <= func.now() - RECONCILE_WINDOW,
        )
        closing = select(Order.id).where(
            Order.status.in_(CLOSED_UNPAID_STATES),
            # A flagged one is a person's (its checkout unknown to SumUp under the key
            # blog holds): closed by ending its review, not a DELETE every pass.
            Order.flagged.is_(False),
        )
        recent = list(await session.scalars(closing.where(open_since).order_by(Order.id)))
        batch = self._runtime.settings.reconcile_batch
        older = closing.where(~open_since, open_before).order_by(Order.id).limit(batch)
        old = list(await session.scalars(older.where(Order.id > self._old_after)))
        # A short batch reached the end: the next pass starts again from the first.
        self._old_after = old[-1] if len(old) == batch else 0
        return sorted({*recent, *old})

    async def run_forever(self, every: float) -> None:
        """A pass at start-up (webhooks may have been lost while this process was down), then
        one per interval across every process, taken in turns (see ``_until_my_turn``)."""
        min_interval = 0.0
        failures = FailureStreak(logger, "reconciliation pass")
        while True:
            try:
                await self.run_once(min_interval=min_interval)
                failures.succeeded()
            except Exception as exc:
                failures.failed(exc)
            self.started_up.set()
            min_interval = every * 0.9
            try:
                pause = await self._until_my_turn(every)
            except Exception:
                logger.warning("reading the last reconciliation pass failed", exc_info=True)
                pause = every
            await asyncio.sleep(pause)

    async def _until_my_turn(self, every: float) -> float:
        """Seconds until this process tries again: an interval after the latest pass started,
        whichever process ran it, plus a random tenth of an interval, so the waiting processes
        wake in a new order each turn. The process that ran the latest pass waits a fifth of an
        interval more, so another live process takes the next turn. (Sleeping one interval
        after every attempt kept the turn with whichever process happened to wake first.)"""
        latest = await self._latest_pass()
        if latest is None:
            return every
        age, process = latest
        if process == self._process:
            wait = every - age + every * 0.2
        else:
            wait = every - age + random.uniform(0.0, every * 0.1)
        # A pass still running elsewhere (older than an interval) is asked about again soon.
        return min(max(wait, every * 0.1), every * 1.2)

    # -- right after a commit ------------------------------------------------------------
    def run_soon(self, work: Awaitable[object], name: str) -> None:
        """Work a request hands over so as not to wait for it (failures logged)."""
        self._spawn(work, name)

    def close_soon(self, order_ids: list[int]) -> None:
        """Close the checkouts of orders a commit just superseded, without making the buyer
        wait; what fails here is closed by the next pass."""
        if order_ids:
            self._spawn(self._close(order_ids), "orders-close-superseded")

    async def _close(self, order_ids: list[int]) -> None:
        paid: list[Applied] = []
        for order_id in order_ids:
            async with self._runtime.maker() as session:
                try:
                    paid += await close_order_checkouts(session, order_id, self._runtime.gateway)
                    await session.commit()
                except MerchantKeyGone as exc:
                    logger.warning("%s", exc.note)
                except Exception as exc:
                    if (said := sumup_waits(exc)) is not None:
                        logger.warning(
                            "closing the checkouts of superseded order %s waits: %s; the next "
                            "reconciliation pass retries",
                            order_id,
                            said,
                        )
                    else:
                        logger.warning(
                            "closing the checkouts of superseded order %s failed; the next "
                            "reconciliation pass retries",
                            order_id,
                            exc_info=True,
                        )
        if any(applied.refund_due for applied in paid):
            # Money arrived for a superseded order just before its checkout could be closed.
            await self.settle_refunds()

    async def quiet(self) -> None:
        """Wait until the work handed over right after commits is done (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
