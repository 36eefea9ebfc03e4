"""Ending a flagged order's review (``rose orders end-review``).

An order is flagged when SumUp reports another amount or currency for one of its checkouts than
the order's, or by a person (``rose orders flag``: orders hears nothing of a refund made in
SumUp's dashboard, nor of a charge-back): a pending one is not marked paid while it is flagged
(a paid one can be flagged by another checkout's report), its goods are refused to new orders
while it is pending, and reconciliation passes it by. A person looks at it (SumUp's dashboard,
the buyer), then ends the review, and the order is settled from what SumUp says now:

- its open checkouts are closed at SumUp, so that they can take no more money;
- every checkout SumUp says is paid has its money given back, the amount and currency SumUp
  took (a refund, settled by the refunds' own machinery: asked once, read back when unknown),
  but for the payment a paid order was paid with, which stays as it is (a paid order can be
  flagged by another checkout's report), and one whose money goes back already; a refund of
  any of them SumUp refused (failed, never asked again) is done once SumUp shows its money
  given back (by a person, in SumUp's dashboard), else it stays failed;
- a pending order becomes ``refund_due`` when money goes back (``refunded`` when SumUp gave it
  all back already), else ``expired``, and its bookings are released; a superseded, expired,
  cancelled, refund_due or refunded one keeps its status, or becomes ``refund_due``
  (``refunded``) as its refunds are; a paid one stays paid, unless SumUp gave back all of the
  payment it was paid with (a refund in SumUp's dashboard, a charge-back decided for the
  buyer): nothing is asked of SumUp for it, the order becomes ``refunded`` (``refund_due``
  while another of its payments goes back) and its bookings are let go at events, the
  confirmed ones too (part of it given back leaves it paid: the merchant keeps the rest);
- it is no longer flagged, its ``flag_reason`` kept (what was reviewed), and every one of its
  attempts is settled as SumUp has it (PAID or EXPIRED, final there): the webhook and the
  return page read a settled attempt no more, and a report read before the review committed
  finds its attempt settled once it has the order's lock (settlement.apply_checkout), so the
  same report cannot flag it again.

Nothing is written unless SumUp answered for every checkout (a 503 otherwise, the order still
flagged), nor when SumUp does not know, or reports otherwise, a checkout orders holds paid (a
409: never undone here; a person looks at it in SumUp's dashboard), nor while what SumUp gave
back of a paid checkout is undecided (a charge-back not decided, a refund still on its way or
in a status orders does not know: a 409), the payment a paid order was paid with included
(one SumUp will not show is kept).

A paid order that records no checkout it was paid with and holds none paid (paid by the
release before orders 0015 with a checkout pay again closed as SumUp took its payment) cannot
be settled from orders' rows: a person finds its payment in SumUp's dashboard and names it
(``paid_with``). It must be one of the order's checkouts whose money does not go back, of a
paid order that records no other, and SumUp must say it paid the order's amount; it is then
recorded as the order's payment and kept, as a recorded one is.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from apps.common.inputs import one_line_name
from apps.common.problems import Conflict, InvalidInput, NotFound
from apps.orders.contract import FlaggedForReview, RefundGoingBack, ReviewEnded
from apps.orders.models import Order, PaymentAttempt, Refund
from apps.orders.payments import (
    CheckoutNotFound,
    MerchantAccount,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RemoteCheckout,
    SumUpGateway,
)
from apps.orders.settlement import (
    CHECKOUT_STATES,
    OPEN_ATTEMPT_STATES,
    REVIEW,
    MerchantAccounts,
    MerchantKeyGone,
    close_at_sumup,
    enqueue_release_of_bookings,
    flag_order,
    given_back_for,
    money,
    paid_attempt_id,
    record_refund,
    refund_recorded_for,
    settle_nothing_confirmed,
    unknown_status_said,
)

logger = logging.getLogger("rose.orders")


async def end_review(
    session: AsyncSession, order_id: int, gateway: SumUpGateway, *, paid_with: str | None = None
) -> ReviewEnded:
    """Settle the flagged order ``order_id`` from what SumUp says of its checkouts now (see the
    module); ``paid_with`` names the checkout a person found a paid order was paid with.
    Commits."""
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
    # A payment a person names that orders did not know is confirmed whole at SumUp; one it
    # knows (recorded, or held PAID) named again is the review without a name.
    newly_named = False
    if paid_with is None:
        honoured = await _honoured_attempt(session, order, attempts)
    else:
        honoured, newly_named = await _named_payment(session, order, attempts, paid_with)
    if order.status == "paid" and order.total > 0 and honoured is None:
        raise Conflict(
            f"Order {order_id} is paid, but orders does not know which checkout paid it: find "
            "its payment in SumUp's dashboard and name it (`rose orders end-review "
            f"{order_id} --paid-with CHECKOUT`); nothing was changed",
            order_id=order_id,
        )
    refunds: list[RefundGoingBack] = []
    closed: list[str] = []
    paid = False
    kept_unchecked: str | None = None
    # The payment a paid order keeps: none once SumUp gave all of it back (below).
    kept = honoured
    for attempt in attempts:
        assert account is not None
        # What the attempt before this one learnt, written now: the transaction is never idle
        # for longer than one checkout's calls to SumUp (the app role's sessions end after
        # 60 s idle in a transaction, ops/db/provision.py), however many attempts it has.
        await session.flush()
        remote, closing = await _what_sumup_says(gateway, account, attempt)
        if attempt is honoured and (remote is None or remote.status != "PAID"):
            # Only a named one can get here: one orders holds paid is checked as it is read.
            raise Conflict(
                f"SumUp reports checkout {attempt.sumup_checkout_id} "
                f"{remote.status if remote else 'unknown'}: it did not pay order {order_id}; "
                "nothing was changed in orders (checkouts closed at SumUp before stay closed)",
                order_id=order_id,
            )
        if remote is None:
            # SumUp does not know it: EXPIRED, as close_attempt records such a checkout.
            attempt.status = "EXPIRED"
            attempt.updated_at = func.now()
            continue
        if closing and remote.status != "PAID":
            closed.append(attempt.sumup_checkout_id)
        attempt.status = remote.status
        attempt.transaction_code = remote.transaction_code or attempt.transaction_code
        attempt.transaction_id = (
            remote.transaction_id or remote.paid_transaction_id or attempt.transaction_id
        )
        attempt.checked_at = func.now()
        attempt.updated_at = func.now()
        if attempt is honoured and (
            money(Decimal(remote.amount)) != money(attempt.amount)
            or remote.currency != attempt.currency
        ):
            raise Conflict(
                f"SumUp reports {remote.amount} {remote.currency} for checkout {remote.id}, "
                f"which paid order {order_id} ({attempt.amount} {attempt.currency}): look at it "
                "in SumUp's dashboard; nothing was changed in orders (checkouts closed at SumUp "
                "before stay closed)",
                order_id=order_id,
            )
        if remote.status == "PAID":
            await _settle_refused_refunds(session, gateway, account, attempt, remote)
        if attempt is honoured and newly_named:
            await _refuse_unless_kept_whole(gateway, account, attempt, remote, order)
        elif attempt is honoured:
            given_back_whole, kept_unchecked = await _given_back_whole(
                gateway, account, attempt, remote
            )
            if given_back_whole:
                # All of it given back already (SumUp's dashboard, or a charge-back): the
                # order keeps no payment, and nothing is asked of SumUp.
                kept = None
                paid = True
                continue
        if remote.status != "PAID" or attempt is honoured:
            continue  # the payment a paid order was paid with stays as it is
        paid = True
        if await refund_recorded_for(session, attempt.id):
            continue
        owed = await _still_taken(gateway, account, attempt, remote)
        if owed is None:
            continue  # all of it given back already (SumUp's dashboard, or a charge-back)
        reason = (
            f"order {order.id}'s review ended: SumUp took {remote.amount} {remote.currency} "
            f"for checkout {remote.id} (the order is {order.total} {order.currency}); "
            f"{owed} {remote.currency} of it goes back"
        )
        await session.flush()  # the attempt's row as SumUp says before its refund names it
        if await record_refund(
            session,
            order,
            attempt,
            REVIEW,
            reason,
            amount=owed,
            currency=remote.currency,
        ):
            refunds.append(
                RefundGoingBack(checkout_id=remote.id, amount=str(owed), currency=remote.currency)
            )
    was_pending = order.status == "pending"
    status_before = order.status
    # A paid order whose payment SumUp gave back whole: settled as what SumUp took goes back.
    paid_back = order.status == "paid" and honoured is not None and kept is None
    if order.status == "paid" and not paid_back:
        pass  # honoured: a payment that goes back is another one (as a second payment's)
    elif paid:
        # What SumUp took goes back: refund_due until every refund of the order is done (one
        # recorded before, and done, leaves nothing owed).
        not_done = await session.scalar(
            select(func.count())
            .select_from(Refund)
            .where(Refund.order_id == order.id, Refund.status != "done")
        )
        order.status = "refund_due" if not_done else "refunded"
    elif was_pending:
        order.status = "expired"
    # What its pages say: an order whose time to pay had passed before it was flagged kept its
    # status, and was not ended by the review.
    order.review_ended_it = order.status != status_before
    order.flagged = False
    order.updated_at = func.now()
    await session.flush()
    if order.status == "paid":
        # Kept, and flagged when events could confirm none of its bookings: their money going
        # back is all of it, and the order says so as one never flagged would.
        settled = await settle_nothing_confirmed(session, order.id)
        if settled is not None:
            set_committed_value(order, "status", settled)
    releasing = (was_pending or paid_back) and await enqueue_release_of_bookings(
        session, order.id, paid_back=paid_back
    )
    status = order.status
    still_going_back = await _refunds_not_done(session, order.id, refunds)
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
        kept_payment=kept.sumup_checkout_id if kept is not None and status == "paid" else None,
        kept_unchecked=kept_unchecked if status == "paid" else None,
        still_going_back=still_going_back,
    )


async def _refunds_not_done(
    session: AsyncSession, order_id: int, recorded_now: list[RefundGoingBack]
) -> list[RefundGoingBack]:
    """The order's refunds not done, other than those this review recorded."""
    rows = await session.execute(
        select(PaymentAttempt.sumup_checkout_id, Refund.amount, Refund.currency)
        .join(PaymentAttempt, PaymentAttempt.id == Refund.attempt_id)
        .where(Refund.order_id == order_id, Refund.status != "done")
        .order_by(Refund.id)
    )
    now = {(refund.checkout_id, refund.amount, refund.currency) for refund in recorded_now}
    return [
        RefundGoingBack(checkout_id=checkout_id, amount=str(amount), currency=currency)
        for checkout_id, amount, currency in rows
        if (checkout_id, str(amount), currency) not in now
    ]


async def flag_for_review(session: AsyncSession, order_id: int, reason: str) -> FlaggedForReview:
    """Flag the order for a person's review, for ``reason``: orders hears nothing of a refund
    made in SumUp's dashboard, nor of a charge-back, so a person who learns of one flags the
    order, and ending its review settles it. Flagged already, it keeps its first reason. The
    reason is one readable line (a 422 otherwise: it is shown in attention's table).

    A pending order is refused (review L3): its checkout is open at SumUp, a flagged order is
    not marked paid, and its review gives back what SumUp took, so the buyer's payment would go
    back for nothing wrong. Its payment, or its expiry, settles it as ever. Commits."""
    reason = one_line_name(reason, "reason", blank="The reason must say what you saw.")
    # Locked: a payment settling the order now waits, or is seen.
    locked = (
        await session.execute(
            select(Order.status, Order.flagged).where(Order.id == order_id).with_for_update()
        )
    ).first()
    if locked is None:
        raise NotFound(f"Order {order_id} does not exist")
    if locked.status == "pending" and not locked.flagged:
        raise Conflict(
            f"Order {order_id} is pending: its checkout is still open at SumUp, and a flag "
            "would give back the buyer's payment; nothing was flagged. Its payment or its "
            "expiry settles it (rose orders attention lists it if that goes wrong)"
        )
    flagged_now = await flag_order(session, order_id, reason)
    order = await session.get(Order, order_id, populate_existing=True)
    assert order is not None  # locked above
    answer = FlaggedForReview(
        order_id=order_id,
        status=order.status,
        flag_reason=order.flag_reason or "",
        flagged_now=flagged_now,
    )
    await session.commit()
    return answer


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
        try:
            await accounts.of(session, order)
        except MerchantKeyGone as gone:
            # A person asked: what puts it right (attention's line), not the buyer's "we
            # will keep checking" (503), which nothing does for a review.
            raise Conflict(
                f"{gone.note}; then end its review again (nothing was changed)",
                order_id=order_id,
            ) from None
    await session.rollback()
    return accounts


async def _still_taken(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt, remote: RemoteCheckout
) -> Decimal | None:
    """What SumUp took for ``remote`` (paid), None when all of it was given back already. A
    person looking at the order may have refunded it in SumUp's dashboard, or the buyer's
    card issuer charged it back: all of it is nothing owed; part of it is a 409 (orders asks
    for all of a payment or none: a refund of the rest recorded here could not tell, were
    its answer lost, what SumUp gave back before it from what it gave back for it). Nothing
    is written either way."""
    taken = money(Decimal(remote.amount))
    given_back = await _given_back(gateway, account, attempt, remote)
    if given_back >= taken:
        return None
    if given_back > 0:
        raise Conflict(
            f"SumUp gave back {given_back} of the {taken} {remote.currency} it took for "
            f"checkout {remote.id} of order {attempt.order_id} already: give back the rest "
            f"({money(taken - given_back)}) in SumUp's dashboard too, then end the review "
            "again; nothing was changed in orders (checkouts closed at SumUp before stay "
            "closed)",
            order_id=attempt.order_id,
        )
    return taken


async def _settle_refused_refunds(
    session: AsyncSession,
    gateway: SumUpGateway,
    account: MerchantAccount,
    attempt: PaymentAttempt,
    remote: RemoteCheckout,
) -> None:
    """The attempt's refunds SumUp refused (failed: never asked again; a person gives the money
    back in SumUp's dashboard) are done once SumUp shows their money given back: all of the
    payment, or at least what its done refunds and each add up to (as a refund whose answer
    was lost is told, settlement). Else, or while that cannot be told (a charge-back or a
    refund undecided, the transaction not shown), they stay failed for a person."""
    refused = list(
        await session.scalars(
            select(Refund)
            .where(Refund.attempt_id == attempt.id, Refund.status == "failed")
            .order_by(Refund.id)
            .with_for_update()
        )
    )
    transaction_id = remote.paid_transaction_id or attempt.transaction_id
    if not refused or transaction_id is None:
        return
    try:
        back = await gateway.money_back(account, transaction_id)
    except PaymentProviderError as exc:
        logger.warning(
            "order %s: refused refunds of checkout %s left failed: %s",
            attempt.order_id,
            remote.id,
            exc.detail,
        )
        return
    if back.charge_back_pending or back.refund_status_unknown is not None or back.refund_pending:
        return
    for refund in refused:
        if back.all_given_back or await given_back_for(session, refund, back):
            refund.status = "done"
            refund.refunded_at = func.now()
            refund.last_error = None
            refund.updated_at = func.now()
            await session.flush()  # counted as done by the next one's sum
            logger.warning(
                "order %s: refund %s of %s SumUp refused is done: SumUp shows it given back "
                "(by a person, in its dashboard)",
                attempt.order_id,
                refund.id,
                refund.amount,
            )


async def _given_back_whole(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt, remote: RemoteCheckout
) -> tuple[bool, str | None]:
    """Whether SumUp gave back all it took for ``remote`` (paid), the payment a paid order was
    paid with: a person refunded it in SumUp's dashboard, or a charge-back was decided for the
    buyer. Part of it is not (a goodwill refund: the order keeps the rest). Raises (a 409,
    nothing written) when that is undecided (``_given_back``: a charge-back pending, a
    refund in a status orders does not know). SumUp refusing to show the transaction (a key
    not allowed to read it), or reporting no transaction, is not: the payment is kept, as
    before this look existed, and SumUp's answer is returned beside it for the person."""
    if (remote.paid_transaction_id or attempt.transaction_id) is None:
        return False, "SumUp reports no transaction for it"
    try:
        given_back = await _given_back(gateway, account, attempt, remote)
    except PaymentProviderError as exc:
        logger.warning(
            "order %s: kept checkout %s without knowing what SumUp gave back of it: %s",
            attempt.order_id,
            remote.id,
            exc.detail,
        )
        return False, f"SumUp would not show its transaction: {exc.detail}"
    return given_back >= money(Decimal(remote.amount)), None


async def _given_back(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt, remote: RemoteCheckout
) -> Decimal:
    """What SumUp gave back so far of the payment ``remote`` (paid) took: refunds and decided
    charge-backs. Raises (a 409, nothing written) when that cannot be told: no transaction,
    a charge-back not decided yet, a refund in a status orders does not know."""
    transaction_id = remote.paid_transaction_id or attempt.transaction_id
    if transaction_id is None:
        raise Conflict(
            f"SumUp reports checkout {remote.id} of order {attempt.order_id} paid without a "
            "transaction orders can give back: look at it in SumUp's dashboard; nothing was "
            "changed in orders (checkouts closed at SumUp before stay closed)",
            order_id=attempt.order_id,
        )
    back = await gateway.money_back(account, transaction_id)
    if back.charge_back_pending:
        raise Conflict(
            f"A charge-back of checkout {remote.id} of order {attempt.order_id} is pending, not "
            "settled at SumUp: end the review once it is decided; nothing was changed in orders "
            "(checkouts closed at SumUp before stay closed)",
            order_id=attempt.order_id,
        )
    if back.refund_status_unknown is not None:
        raise Conflict(
            f"A refund of checkout {remote.id} of order {attempt.order_id} is "
            f"{back.refund_status_unknown} at SumUp, a status orders does not know: look at it "
            "in SumUp's dashboard; nothing was changed in orders (checkouts closed at SumUp "
            "before stay closed)",
            order_id=attempt.order_id,
        )
    if back.refund_pending:
        # Counted as given back, the order could be settled (its bookings let go, for good)
        # on money SumUp may still fail to send.
        raise Conflict(
            f"A refund of checkout {remote.id} of order {attempt.order_id} is still on its way "
            "at SumUp (pending): end the review once SumUp has made it; nothing was changed in "
            "orders (checkouts closed at SumUp before stay closed)",
            order_id=attempt.order_id,
        )
    return back.given_back


def _check_under_review(order: Order | None, order_id: int) -> None:
    if order is None:
        raise NotFound(f"Order {order_id} does not exist")
    if not order.flagged:
        if order.flag_reason:
            raise Conflict(
                f"Order {order_id} is not under review: its review ended already; it is "
                f"{order.status}",
                order_id=order_id,
            )
        raise Conflict(f"Order {order_id} is not under review: there is no review to end")


async def _honoured_attempt(
    session: AsyncSession, order: Order, attempts: list[PaymentAttempt]
) -> PaymentAttempt | None:
    """The attempt a paid order was paid with (settlement's ``paid_attempt_id``), None for an
    order that is not paid."""
    if order.status != "paid":
        return None
    paid_with = await paid_attempt_id(session, order.id, order.paid_attempt_id)
    if order.paid_attempt_id is None and paid_with is not None and order.paid_at is not None:
        # Paid by the release before orders 0015: recorded now (its row is locked), so that
        # what this review changes cannot make another attempt look like it later.
        order.paid_attempt_id = paid_with
    return next((attempt for attempt in attempts if attempt.id == paid_with), None)


async def _named_payment(
    session: AsyncSession, order: Order, attempts: list[PaymentAttempt], paid_with: str
) -> tuple[PaymentAttempt, bool]:
    """The attempt of checkout ``paid_with``, which a person found the paid ``order`` was paid
    with, once orders' rows allow it; recorded (its row is locked). SumUp confirms it after.
    And whether it is new to orders (neither recorded nor held PAID)."""
    named = next((attempt for attempt in attempts if attempt.sumup_checkout_id == paid_with), None)
    if named is None:
        raise InvalidInput(
            f"checkout {paid_with} is not one of order {order.id}'s checkouts", field="paid_with"
        )
    if order.status != "paid":
        raise Conflict(
            f"Order {order.id} is {order.status}: only a paid order is paid with a checkout; end "
            "its review without --paid-with. Nothing was changed",
            order_id=order.id,
        )
    # What orders knows (recorded, or for an order the release before 0015 paid, the one it
    # holds PAID) is not overridden: naming is for an order that does not know.
    known = await paid_attempt_id(session, order.id, order.paid_attempt_id)
    if known is not None and known != named.id:
        checkout = next(
            (attempt.sumup_checkout_id for attempt in attempts if attempt.id == known), known
        )
        how = (
            "recorded checkout {} as its payment when it was paid"
            if order.paid_attempt_id is not None
            else "knows checkout {} as the payment it was paid with (held PAID)"
        )
        raise Conflict(
            f"Order {order.id} {how.format(checkout)}, not {paid_with}: end its review without "
            "--paid-with; nothing was changed",
            order_id=order.id,
        )
    if await refund_recorded_for(session, named.id):
        raise Conflict(
            f"The money of checkout {paid_with} goes back already (a refund of order "
            f"{order.id}'s): it cannot be the payment the order keeps; nothing was changed",
            order_id=order.id,
        )
    if order.paid_at is not None:
        order.paid_attempt_id = named.id  # the transition to paid would have recorded it
    return named, known is None


async def _refuse_unless_kept_whole(
    gateway: SumUpGateway,
    account: MerchantAccount,
    attempt: PaymentAttempt,
    remote: RemoteCheckout,
    order: Order,
) -> None:
    """A checkout a person names as a paid order's payment is kept only if SumUp took the
    order's amount with it and none of that went back (a refund in SumUp's dashboard, a
    charge-back, decided or not): else the order would stay paid with nothing, or less, taken.
    Raises (nothing is written)."""
    refused = (
        f"it cannot be the payment order {order.id} keeps: look at it in SumUp's dashboard; "
        "nothing was changed in orders (checkouts closed at SumUp before stay closed)"
    )
    if money(Decimal(remote.amount)) != money(order.total) or remote.currency != order.currency:
        raise Conflict(
            f"SumUp took {remote.amount} {remote.currency} with checkout {remote.id}, not the "
            f"order's {order.total} {order.currency}: {refused}",
            order_id=order.id,
        )
    given_back = await _given_back(gateway, account, attempt, remote)
    if given_back > 0:
        raise Conflict(
            f"SumUp gave back {given_back} {remote.currency} of checkout {remote.id} "
            f"already: {refused}",
            order_id=order.id,
        )


async def _what_sumup_says(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt
) -> tuple[RemoteCheckout | None, bool]:
    """The attempt's checkout as SumUp has it now, and whether it was closed here: closed first
    if it is open (by orders or at SumUp: so that it can take no more money, settlement's
    close_at_sumup); None when SumUp does not know one orders does not hold paid (its attempt
    is EXPIRED: ``close_attempt`` records a checkout SumUp does not know so). Raises (nothing
    is written) when SumUp cannot answer or keeps it open, and for a checkout orders holds
    paid that SumUp does not know or reports otherwise (never undone)."""
    checkout_id = attempt.sumup_checkout_id
    held_paid = attempt.status == "PAID"
    try:
        if attempt.status not in OPEN_ATTEMPT_STATES:
            remote = await gateway.get_checkout(account, checkout_id)
            if held_paid and remote.status != "PAID":
                raise Conflict(
                    f"SumUp reports checkout {checkout_id} of order {attempt.order_id} "
                    f"{remote.status}, which orders holds PAID: look at it in SumUp's "
                    "dashboard; nothing was changed in orders (checkouts closed at SumUp "
                    "before stay closed)",
                    order_id=attempt.order_id,
                )
            if remote.status not in OPEN_ATTEMPT_STATES:
                return _known(remote, attempt), False
        remote, closing = await close_at_sumup(gateway, account, checkout_id)
        _known(remote, attempt)
    except CheckoutNotFound:
        if not held_paid:
            return None, False
        raise Conflict(
            f"SumUp does not know checkout {checkout_id} of order {attempt.order_id}, which "
            "orders holds PAID: look at it in SumUp's dashboard; nothing was changed in orders "
            "(checkouts closed at SumUp before stay closed)",
            order_id=attempt.order_id,
        ) from None
    if remote.status in OPEN_ATTEMPT_STATES:
        # Every attempt leaves the review settled (PAID or EXPIRED, final at SumUp): the
        # webhook and the return page then never read it again, so nothing flags the
        # order once more.
        raise PaymentProviderUnavailable(
            f"checkout {checkout_id} is still {remote.status} at SumUp after closing it"
        )
    return remote, closing


def _known(remote: RemoteCheckout, attempt: PaymentAttempt) -> RemoteCheckout:
    """``remote``, in a status orders knows; else a 409 (nothing written): whether SumUp took
    the payment cannot be told from it (settlement.unknown_status_said)."""
    if remote.status not in CHECKOUT_STATES:
        raise Conflict(
            f"{unknown_status_said(remote)}; nothing was changed in orders (checkouts closed "
            "at SumUp before stay closed)",
            order_id=attempt.order_id,
        )
    return remote
