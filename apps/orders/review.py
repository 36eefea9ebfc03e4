"""Ending a flagged order's review (``rose orders end-review``).

An order is flagged when SumUp reports another amount or currency for one of its checkouts than
the order's: it is never marked paid, its goods are refused to new orders while it is pending,
and reconciliation passes it by. A person looks at it (SumUp's dashboard, the buyer), then ends
the review, and the order is settled from what SumUp says now, as an order that was never paid:

- its open checkouts are closed at SumUp, so that they can take no more money;
- every checkout SumUp says is paid has its money given back, the amount and currency SumUp
  took (a refund, settled by the refunds' own machinery: asked once, read back when unknown);
- a pending order becomes ``refund_due`` when money goes back, else ``expired``, and its
  bookings are released; a superseded, expired or cancelled one keeps its status, or becomes
  ``refund_due``;
- it is no longer flagged, its ``flag_reason`` kept (what was reviewed), and every one of its
  attempts is settled as SumUp has it (PAID or EXPIRED, final there): the webhook and the
  return page read a settled attempt no more, and a report read before the review committed
  finds its attempt settled once it has the order's lock (settlement.apply_checkout), so the
  same report cannot flag it again.

An order that was paid, or whose money is already going back, is not settled this way (409):
what it holds was honoured, and a person settles it in SumUp's dashboard. Nothing is written
unless SumUp answered for every checkout (a 503 otherwise, the order still flagged).
"""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.problems import Conflict, NotFound
from apps.orders.contract import RefundGoingBack, ReviewEnded
from apps.orders.models import CLOSED_UNPAID_STATES, Order, PaymentAttempt, Refund
from apps.orders.payments import (
    CheckoutNotFound,
    MerchantAccount,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RemoteCheckout,
    SumUpGateway,
)
from apps.orders.settlement import (
    OPEN_ATTEMPT_STATES,
    MerchantAccounts,
    enqueue_release_of_bookings,
    money,
    record_refund,
)

logger = logging.getLogger("rose.orders")

REVIEW = "review"
# The statuses of an order that was never paid: the only ones a review ends by settling.
NEVER_PAID = ("pending", *CLOSED_UNPAID_STATES)


async def end_review(session: AsyncSession, order_id: int, gateway: SumUpGateway) -> ReviewEnded:
    """Settle the flagged order ``order_id`` from what SumUp says of its checkouts now (see the
    module). Commits."""
    accounts = await _accounts_of(session, order_id)
    # The order's row first, then its attempts' (settlement's one order of locks), FOR NO KEY
    # UPDATE as settlement's: a refund or item row being written for them (its key share) does
    # not keep the review waiting.
    order = await session.scalar(
        select(Order).where(Order.id == order_id).with_for_update(key_share=True)
    )
    _check_under_review(order, order_id)
    assert order is not None
    attempts = list(
        await session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.order_id == order_id)
            .order_by(PaymentAttempt.number)
            .with_for_update(key_share=True)
        )
    )
    account = await accounts.of(session, order) if attempts else None
    refunds: list[RefundGoingBack] = []
    closed: list[str] = []
    paid = False
    for attempt in attempts:
        assert account is not None
        was_open = attempt.status in OPEN_ATTEMPT_STATES
        remote = await _what_sumup_says(gateway, account, attempt)
        if remote is None:
            attempt.status = "EXPIRED"  # SumUp does not know it (an open one: asked above)
            attempt.updated_at = func.now()
            continue
        if was_open and remote.status != "PAID":
            closed.append(attempt.sumup_checkout_id)
        attempt.status = remote.status
        attempt.transaction_code = remote.transaction_code or attempt.transaction_code
        attempt.transaction_id = remote.transaction_id or attempt.transaction_id
        attempt.checked_at = func.now()
        attempt.updated_at = func.now()
        if remote.status != "PAID":
            continue
        paid = True
        if await _money_already_going_back(session, attempt):
            continue
        reason = (
            f"order {order.id}'s review ended: SumUp took {remote.amount} {remote.currency} "
            f"for checkout {remote.id} (the order is {order.total} {order.currency}); "
            "it goes back"
        )
        await session.flush()  # the attempt's row as SumUp says before its refund names it
        if await record_refund(
            session,
            order,
            attempt,
            REVIEW,
            reason,
            amount=money(Decimal(remote.amount)),
            currency=remote.currency,
        ):
            refunds.append(
                RefundGoingBack(
                    checkout_id=remote.id,
                    amount=str(money(Decimal(remote.amount))),
                    currency=remote.currency,
                )
            )
    was_pending = order.status == "pending"
    if paid:
        # What SumUp took goes back: refund_due until every refund of the order is done (one
        # recorded before, and done, leaves nothing owed).
        owed = await session.scalar(
            select(func.count())
            .select_from(Refund)
            .where(Refund.order_id == order.id, Refund.status != "done")
        )
        order.status = "refund_due" if owed else "refunded"
    elif was_pending:
        order.status = "expired"
    order.flagged = False
    order.updated_at = func.now()
    await session.flush()
    releasing = was_pending and await enqueue_release_of_bookings(session, order.id)
    status = order.status
    await session.commit()
    logger.warning(
        "order %s: its review ended (%s): %s, %d checkout(s) closed, %d refund(s) due",
        order_id,
        order.flag_reason,
        status,
        len(closed),
        len(refunds),
    )
    return ReviewEnded(
        order_id=order_id,
        status=status,
        closed_checkouts=closed,
        refunds=refunds,
        releasing_bookings=releasing,
    )


async def _accounts_of(session: AsyncSession, order_id: int) -> MerchantAccounts:
    """The order's SumUp account, read from blog in a transaction of its own, before SumUp is
    asked anything: the transaction that writes what SumUp said reads no foreign table, so a
    connection to blog lost meanwhile cannot keep it from committing (as pay again does)."""
    accounts = MerchantAccounts()
    order = await session.get(Order, order_id)
    _check_under_review(order, order_id)
    assert order is not None
    has_checkouts = await session.scalar(
        select(func.count()).where(PaymentAttempt.order_id == order_id)
    )
    if has_checkouts:
        await accounts.of(session, order)
    await session.rollback()
    return accounts


def _check_under_review(order: Order | None, order_id: int) -> None:
    if order is None:
        raise NotFound(f"Order {order_id} does not exist")
    if not order.flagged:
        raise Conflict(f"Order {order_id} is not under review: there is no review to end")
    if order.status not in NEVER_PAID:
        raise Conflict(
            f"Order {order_id} is {order.status}: ending a review settles an order that was "
            "never paid. What this one holds was honoured or is going back already: look at "
            "its checkouts in SumUp's dashboard",
            order_id=order_id,
        )


async def _what_sumup_says(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt
) -> RemoteCheckout | None:
    """The attempt's checkout as SumUp has it now, closed first if it was open (so that it can
    take no more money); None when SumUp does not know an open one. Raises (nothing is
    written) when SumUp cannot answer, or when it does not know a checkout we hold settled."""
    checkout_id = attempt.sumup_checkout_id
    try:
        if attempt.status not in OPEN_ATTEMPT_STATES:
            return await gateway.get_checkout(account, checkout_id)
        try:
            remote = await gateway.deactivate_checkout(account, checkout_id)
        except (PaymentProviderUnavailable, PaymentProviderError):
            remote = await gateway.get_checkout(account, checkout_id)
            if remote.status in OPEN_ATTEMPT_STATES:
                raise
            return remote
        if remote.status in OPEN_ATTEMPT_STATES:
            # Every attempt leaves the review settled (PAID or EXPIRED, final at SumUp): the
            # webhook and the return page then never read it again, so nothing flags the
            # order once more.
            raise PaymentProviderUnavailable(
                f"checkout {checkout_id} is still {remote.status} at SumUp after closing it"
            )
        return remote
    except CheckoutNotFound:
        if attempt.status in OPEN_ATTEMPT_STATES:
            return None
        raise Conflict(
            f"SumUp does not know checkout {checkout_id} of order {attempt.order_id}, which "
            f"orders holds {attempt.status}: look at it in SumUp's dashboard; nothing was "
            "changed",
            order_id=attempt.order_id,
        ) from None


async def _money_already_going_back(session: AsyncSession, attempt: PaymentAttempt) -> bool:
    """A refund of this attempt is recorded already (of any kind): its money goes back once."""
    found = await session.scalar(select(Refund.id).where(Refund.attempt_id == attempt.id).limit(1))
    return found is not None
