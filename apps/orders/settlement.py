"""Applying what SumUp reports to orders, closing checkouts that must no longer take money, and
giving money back.

Rules that keep payments safe:
- what SumUp reports is trusted only after re-fetching the checkout and comparing amount and
  currency; a mismatch flags the order instead of marking it paid;
- every status change is a conditional update, so duplicated, late or out-of-order reports are
  harmless; ``FAILED`` is not final (the buyer may retry on the hosted page);
- a payment for an order that will not be honoured (superseded, expired, cancelled) is never
  silently ``paid``: the order becomes ``refund_due`` and a refund is recorded in the same
  transaction; so is money for bookings that could not be confirmed;
- a refund is recorded as ``requested`` (committed) before SumUp is asked, and an unknown
  outcome is settled by reading the transaction back, so money goes back exactly once;
- the actions a payment triggers elsewhere (clear the cart, confirm bookings) go into the outbox
  in the same transaction as the transition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import msgspec
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ScalarSelect,
    Select,
    String,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import array, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from apps.cart import contract as cart
from apps.cart.contract import ClearCartForOrder, PaidLine
from apps.common.db import table_of
from apps.common.direct import Call, DirectRow, DirectStatement, run_together
from apps.common.fdw import remote_read
from apps.common.outbox import enqueue, enqueue_at_commit
from apps.common.problems import Conflict, DependencyUnavailable
from apps.events import contract as events
from apps.orders.models import (
    CLOSED_UNPAID_STATES,
    Order,
    OrderClaim,
    OrderItem,
    PaymentAttempt,
    Refund,
    order_lines,
    outbox,
    page_payment_configs,
    retired_sumup_keys,
)
from apps.orders.payments import (
    CENT,
    CheckoutNotFound,
    CheckoutStatusUnknown,
    MerchantAccount,
    MoneyBack,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RefundRefused,
    RemoteCheckout,
    SumUpGateway,
)

logger = logging.getLogger("rose.orders")

OPEN_ATTEMPT_STATES = ("PENDING", "FAILED")
# The checkout statuses orders knows (SumUp's four, as payment_attempts' status_known allows).
# The SDK's type is open (any other string): one outside them says nothing of the payment.
CHECKOUT_STATES = (*OPEN_ATTEMPT_STATES, "PAID", "EXPIRED")
LATE_PAYMENT = "late-payment"
UNCONFIRMED_BOOKINGS = "unconfirmed-bookings"
# A payment a review of a flagged order gives back (apps.orders.review).
REVIEW = "review"


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT)


@dataclass(frozen=True)
class Applied:
    """What applying a report did: ``paid`` is True only for the one call that made the
    ``pending -> paid`` transition; ``refund_due`` for a payment that must go back."""

    order_status: str
    attempt_status: str
    paid: bool = False
    flagged: bool = False
    refund_due: bool = False


@dataclass
class OrderRow:
    """An order as the webhook reads it: one row of Core columns, not an ORM instance (the
    webhook changes it only through its conditional UPDATEs, so it needs no identity map)."""

    id: int
    status: str
    flagged: bool
    superseded_by: int | None
    user_id: int | None
    session_id: str | None
    page_post_id: int | None
    # None only for an order with nothing to pay, which has no attempt for a webhook to name.
    page_config_id: int | None
    # The SumUp merchant its checkouts were made for (snapshotted with page_config_id).
    merchant_code: str | None
    # When it was placed: what a clear of lines naming no cart lines needs (ClearCartForOrder).
    created_at: datetime


@dataclass
class AttemptRow:
    """A payment attempt as the webhook reads it (see :class:`OrderRow`)."""

    id: int
    number: int
    sumup_checkout_id: str
    amount: Decimal
    currency: str
    status: str
    transaction_code: str | None
    transaction_id: str | None


# What applying a report works on: the ORM instances other paths hold, or the webhook's rows.
OrderInHand = Order | OrderRow
AttemptInHand = PaymentAttempt | AttemptRow


def _now_says(session: AsyncSession, thing: OrderInHand | AttemptInHand, **values: Any) -> None:
    """The order or attempt in hand says what its row now says (after a conditional UPDATE):
    for an ORM instance, as loaded state, not as a change to flush."""
    if isinstance(thing, OrderRow | AttemptRow):
        for name, value in values.items():
            setattr(thing, name, value)
        return
    for name, value in values.items():
        set_committed_value(thing, name, value)
    if isinstance(thing, PaymentAttempt):
        # The database's clock is not known here: updated_at is read again if anything asks.
        session.expire(thing, ["updated_at"])


class MerchantKeyGone(DependencyUnavailable):
    """The SumUp merchant an order was made for has no key in its page config any more (an
    editor removed the key or the merchant, or the page now names another merchant), and blog
    keeps no retired key of that merchant for the config either (kept
    ``BLOG_RETIRED_SUMUP_KEY_DAYS``, 90 by default). What happened to the order's checkouts
    cannot be learnt until a key is back, so the outcome is unknown: never "checkout not
    found" (a checkout unknown under another merchant's key proves nothing), never a reason to
    expire or close the order. For the buyer and for SumUp's webhook it is SumUp being out of
    reach (503: we keep checking, SumUp delivers again); ``rose orders attention`` lists the
    order with :attr:`note`."""

    def __init__(
        self,
        order_id: int,
        page_config_id: int,
        merchant_code: str,
        names_now: str | None,
        *,
        page_names_it: bool = False,
        config_gone: bool = False,
    ) -> None:
        self.order_id = order_id
        # The merchant the page names now when it is another than the order's, else None.
        self.names_now = names_now
        self.note = key_missing_note(
            order_id,
            merchant_code,
            page_config_id,
            names_now,
            page_names_it=page_names_it,
            config_gone=config_gone,
        )
        super().__init__(
            f"The payment of order {order_id} cannot be checked right now: its SumUp merchant "
            f"{merchant_code} has no key in page config {page_config_id} any more; we will keep "
            "checking",
            service="sumup",
        )


def key_missing_note(
    order_id: int,
    merchant_code: str,
    page_config_id: int,
    names_now: str | None,
    *,
    page_names_it: bool = False,
    config_gone: bool = False,
) -> str:
    """What a person is told about an order whose merchant has no key any more (attention,
    the reconciliation's warning): what they can do about it. Any API key of the merchant
    sees all its checkouts. When the page still names the merchant (its key removed), that is
    putting a key back in the page's settings; otherwise (the page names another merchant or
    none, or the config was deleted) a key in the page's settings would send new payments
    there, so it is a key given to blog as a retired one; without any key, SumUp's dashboard."""
    said = (
        f"order {order_id}: its SumUp merchant {merchant_code} has no key in page config "
        f"{page_config_id} any more"
    )
    if page_names_it:
        return (
            f"{said}; a payment may be waiting on SumUp: restore the key (blog page settings; "
            f"any API key of merchant {merchant_code}, a new one from its SumUp dashboard if the "
            "old one is lost) to settle it"
        )
    if config_gone:
        said += " (the config was deleted)"
    elif names_now:
        said += f" (it now names merchant {names_now})"
    else:
        said += " (it names no merchant now)"
    return (
        f"{said} and blog keeps none it retired; a payment may be waiting on SumUp: give blog a "
        f"key of merchant {merchant_code} (any API key of it, a new one from its SumUp "
        "dashboard if the old one is lost) as a retired one, as blog's owner: INSERT INTO "
        "blog.retired_sumup_keys (page_config_id, sumup_merchant_code, sumup_api_key) VALUES "
        f"({page_config_id}, '{merchant_code}', '<key>'); orders then settles, closes or "
        "refunds it. Without any key of that merchant, look the order's checkouts up in its "
        "SumUp dashboard (refund or cancel them there): the order stays pending and listed here"
    )


# A page config's SumUp merchant code and API key as blog holds them now (either may be
# missing), and the key blog retired for the order's merchant on that config (when the config
# stopped using it, or was deleted: the first two are then None); None when neither is there.
ConfiguredAccount = tuple[str | None, str | None, str | None] | None


class MerchantAccounts:
    """Page configs' SumUp accounts (read through FDW from blog), remembered for one unit of
    work so a reconciliation pass reads each config once."""

    def __init__(self, known: dict[int, MerchantAccount] | None = None) -> None:
        # By config and the order's merchant: the retired key read depends on both.
        self._known: dict[tuple[int, str | None], ConfiguredAccount] = {
            (config_id, account.merchant_code): (account.merchant_code, account.api_key, None)
            for config_id, account in (known or {}).items()
        }

    @classmethod
    def as_read(
        cls, config_id: int, merchant_code: str | None, found: ConfiguredAccount
    ) -> MerchantAccounts:
        """What one :func:`configured_account` read found, for the unit of work after it."""
        accounts = cls()
        accounts._known[(config_id, merchant_code)] = found
        return accounts

    async def of(self, session: AsyncSession, order: OrderInHand) -> MerchantAccount:
        """The account to ask SumUp about ``order``'s checkouts with: its own merchant's (a
        retired key of it included: these are checkouts already made, or money going back)."""
        config_id = payment_config_of(order)
        known = (config_id, order.merchant_code)
        if known not in self._known:
            self._known[known] = await configured_account(session, config_id, order.merchant_code)
        return account_of(order.id, order.merchant_code, config_id, self._known[known])


class RecentMerchantAccounts:
    """The SumUp accounts this process read from blog lately, for webhooks.

    A webhook only reads a checkout's status, which needs nothing but the API key, and a stale
    key shows at once: SumUp answers 401 (or does not know the checkout), and the webhook reads
    blog again. So a webhook that finds its page config's account here makes no FDW read at
    all, and settles payments while blog is down. What it costs: a key removed from a page
    config is still used to *read* statuses for up to ``seconds``. Nothing that moves money or
    chooses where it goes (create-order, pay again, closing checkouts, refunds) uses this: they
    read blog every time."""

    # Page configs are few (one per page that takes payments); past this many, expired
    # entries are dropped as new ones arrive.
    PRUNE_ABOVE = 256

    # Checkouts this process opened lately: past this many, the oldest are forgotten (a miss
    # only costs the webhook its read of SumUp at once).
    MOST_OPENED = 4096

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._accounts: dict[int, tuple[float, MerchantAccount]] = {}
        # SumUp checkout id -> (its order, its page config, the account it was opened with), in
        # the order they were opened.
        self._opened: dict[str, tuple[int, int, MerchantAccount]] = {}

    def learn(self, page_config_id: int, account: MerchantAccount) -> None:
        if self.seconds <= 0:
            return
        now = self._clock()
        if len(self._accounts) >= self.PRUNE_ABOVE:
            self._accounts = {key: entry for key, entry in self._accounts.items() if entry[0] > now}
        self._accounts[page_config_id] = (now + self.seconds, account)

    def recall(self, page_config_id: int) -> MerchantAccount | None:
        entry = self._accounts.get(page_config_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._accounts[page_config_id]
            return None
        return entry[1]

    def forget(self, page_config_id: int) -> None:
        self._accounts.pop(page_config_id, None)

    def opened(
        self, checkout_id: str, order_id: int, page_config_id: int, account: MerchantAccount
    ) -> None:
        """Create-order opened ``checkout_id`` with ``account`` (the one it just learnt)."""
        if self.seconds <= 0:
            return
        if len(self._opened) >= self.MOST_OPENED:
            del self._opened[next(iter(self._opened))]
        self._opened[checkout_id] = (order_id, page_config_id, account)

    def forget_opened(self, checkout_id: str) -> None:
        """Something else read the checkout from SumUp (the return page): its webhook need not
        read it early, which would be a second GET of a checkout most likely settled."""
        self._opened.pop(checkout_id, None)

    def take_opened(self, order_id: int, checkout_id: str) -> tuple[int, MerchantAccount] | None:
        """The page config and account of a checkout this process opened for ``order_id``,
        given once: only its first webhook reads SumUp before reading the attempt (a
        repeated or forged one then asks SumUp only for an attempt still open, as before).
        Only while the config's account recalled is still the one it was opened with: the
        checkout's merchant's key is never sent with another merchant's checkout."""
        opened = self._opened.pop(checkout_id, None)
        if opened is None or opened[0] != order_id:
            return None
        _, page_config_id, account = opened
        if self.recall(page_config_id) != account:
            return None
        return page_config_id, account


@dataclass(frozen=True)
class EarlyCheckoutRead:
    """A webhook's GET of a checkout this process opened, sent before the attempt is read (the
    two wait together). Its answer is used only for the attempt it turns out to be: open, of
    the same page config, read with the account still remembered for it
    (:func:`refresh_reported_attempt`); else it is dropped."""

    page_config_id: int
    account: MerchantAccount
    answer: asyncio.Task[RemoteCheckout]

    @classmethod
    def start(
        cls,
        gateway: SumUpGateway,
        recent: RecentMerchantAccounts,
        order_id: int,
        checkout_id: str,
    ) -> EarlyCheckoutRead | None:
        opened = recent.take_opened(order_id, checkout_id)
        if opened is None:
            return None
        page_config_id, account = opened
        answer = asyncio.ensure_future(gateway.get_checkout(account, checkout_id))
        return cls(page_config_id, account, answer)

    def serves(self, page_config_id: int, account: MerchantAccount) -> bool:
        return self.page_config_id == page_config_id and self.account == account

    def drop(self) -> None:
        """Not used: cancelled if still asking; its outcome is retrieved, never logged."""
        self.answer.cancel()
        self.answer.add_done_callback(retrieved)


def retrieved(answer: asyncio.Future[Any]) -> None:
    """A done callback: the outcome of work nobody may await is read, never logged by asyncio."""
    if not answer.cancelled():
        answer.exception()


def payment_config_of(order: OrderInHand) -> int:
    """The page config whose SumUp merchant an order is paid through. Whatever asks SumUp about
    an order does so about one of its payment attempts (or a refund of one), and an order has
    attempts only when it has something to pay, which the database refuses without its
    merchant (orders 0011). Only an order with nothing to pay, paid as it is made, names none."""
    if order.page_config_id is None:
        raise names_no_merchant(order.id)
    return order.page_config_id


def names_no_merchant(order_id: int) -> Conflict:
    """What asking SumUp about an order with nothing to pay (no merchant) answers."""
    return Conflict(f"order {order_id} had nothing to pay: it names no SumUp merchant")


def account_lookup(
    page_config_id: ColumnElement[int], merchant_code: ColumnElement[str | None]
) -> ScalarSelect[Any]:
    """The SumUp account of the page config ``page_config_id`` names, through FDW, as one value:
    ``[merchant code, API key, retired key]``, the last the key blog retired for
    ``merchant_code`` (the order's merchant) on that config, if any; the first two NULL when
    the config is gone (deleted: its retired key is still found, by the order's config id and
    merchant alone); NULL when neither is there. Both of blog's views in one full join, which
    postgres_fdw sends to blog as one query (one round trip; tests/integration/test_orders.py
    checks it stays one remote scan)."""
    configs = (
        select(
            page_payment_configs.c.id,
            page_payment_configs.c.sumup_merchant_code,
            page_payment_configs.c.sumup_api_key,
        )
        .where(page_payment_configs.c.id == page_config_id)
        .subquery("config")
    )
    retired = (
        select(retired_sumup_keys.c.page_config_id, retired_sumup_keys.c.sumup_api_key)
        .where(
            retired_sumup_keys.c.page_config_id == page_config_id,
            retired_sumup_keys.c.sumup_merchant_code == merchant_code,
        )
        .subquery("retired")
    )
    return (
        select(
            array([configs.c.sumup_merchant_code, configs.c.sumup_api_key, retired.c.sumup_api_key])
        )
        .select_from(
            configs.outerjoin(retired, retired.c.page_config_id == configs.c.id, full=True)
        )
        .scalar_subquery()
    )


# Built once, with bound parameters: constructing a statement and its cache key cost as much
# client CPU as running it (bench.checkout).
_ACCOUNT_BY_ID = DirectStatement(
    select(account_lookup(bindparam("page_config_id"), bindparam("merchant_code", type_=String)))
)


async def configured_account(
    session: AsyncSession, page_config_id: int, merchant_code: str | None
) -> ConfiguredAccount:
    async with remote_read(session, "blog", isolate=False):
        found = await _ACCOUNT_BY_ID.scalar(
            session, {"page_config_id": page_config_id, "merchant_code": merchant_code}
        )
    return None if found is None else (found[0], found[1], found[2])


async def merchant_account(
    session: AsyncSession, order: OrderInHand, *, new_checkout: bool
) -> MerchantAccount:
    """The account to ask SumUp about ``order``'s checkouts with, as blog holds it now (see
    :func:`account_of`). ``new_checkout`` (for a checkout about to be made: no retired key)
    has no default: each caller says whether it moves new money."""
    config_id = payment_config_of(order)
    found = await configured_account(session, config_id, order.merchant_code)
    return account_of(order.id, order.merchant_code, config_id, found, new_checkout=new_checkout)


def account_of(
    order_id: int,
    order_merchant: str | None,
    page_config_id: int,
    found: ConfiguredAccount,
    *,
    new_checkout: bool = False,
) -> MerchantAccount:
    """The SumUp account of the order's merchant (``order_merchant``, its snapshot), from its
    page config's as :func:`configured_account` found it (see :class:`MerchantKeyGone` when it
    has none): a config that now names another merchant has no key for the order's checkouts,
    which only the merchant they were made for knows. When the config no longer holds that
    merchant with a key, the key blog retired for it is used, for the checkouts already made
    and money going back; never for a ``new_checkout``: new money goes only to the merchant the
    page names now."""
    names_now, api_key, retired_key = found or (None, None, None)
    merchant_code = order_merchant or names_now
    if merchant_code and api_key and names_now == merchant_code:
        return MerchantAccount(merchant_code, api_key)
    if merchant_code and retired_key and not new_checkout:
        return MerchantAccount(merchant_code, retired_key)
    raise MerchantKeyGone(
        order_id,
        page_config_id,
        merchant_code or "(none)",
        names_now if names_now != merchant_code else None,
        page_names_it=names_now is not None and names_now == merchant_code,
        config_gone=found is None,
    )


def _settle_attempt() -> DirectStatement:
    attempts = table_of(PaymentAttempt)
    # A paid or expired attempt never changes again; FAILED may still become PAID. (= ANY of
    # an array, as PostgreSQL runs an IN list anyway: a literal IN list is rendered per call.)
    open_states = array(list(OPEN_ATTEMPT_STATES), type_=String)
    return DirectStatement(
        update(attempts)
        .where(
            attempts.c.id == bindparam("attempt_id"),
            attempts.c.status == any_(open_states),
            attempts.c.status != bindparam("remote_status"),
        )
        .values(
            status=bindparam("remote_status"),
            transaction_code=bindparam("remote_code"),
            transaction_id=bindparam("remote_transaction"),
            updated_at=func.now(),
        )
        .returning(attempts.c.id)
    )


_SETTLE_ATTEMPT = _settle_attempt()


def _lock_order() -> DirectStatement:
    orders = table_of(Order)
    return DirectStatement(
        select(orders.c.status, orders.c.flagged, orders.c.superseded_by, orders.c.paid_attempt_id)
        .where(orders.c.id == bindparam("order_id"))
        .with_for_update(key_share=True)
    )


_LOCK_ORDER = _lock_order()
# An attempt's status as it is now (read after its order's row is locked).
_ATTEMPT_STATUS = DirectStatement(
    select(table_of(PaymentAttempt).c.status).where(
        table_of(PaymentAttempt).c.id == bindparam("attempt_id")
    )
)


async def apply_checkout(
    session: AsyncSession,
    order: OrderInHand,
    attempt: AttemptInHand,
    remote: RemoteCheckout,
    *,
    closing: bool = False,
) -> Applied:
    """What SumUp said of ``attempt``'s checkout, applied. ``closing``: SumUp's answer to
    closing it (the order can no longer be paid)."""
    if remote.id != attempt.sumup_checkout_id:
        raise ValueError("the checkout does not belong to this attempt")
    reason = None
    if remote.status not in CHECKOUT_STATES:
        # Neither paid nor unpaid to orders: never written (the database refuses it, and a
        # guess could expire a paid order or pay an unpaid one). An open one may still be
        # paid: waited out (a flag now would keep the payment from the order and give it
        # back, review M2); one being closed is left to a person.
        if not closing and attempt.status in OPEN_ATTEMPT_STATES:
            raise CheckoutStatusUnknown(remote.id, remote.status)
        reason = unknown_status_said(remote)
    elif money(remote.amount) != money(attempt.amount) or remote.currency != attempt.currency:
        reason = (
            f"SumUp reports {remote.amount} {remote.currency} for checkout {remote.id}, "
            f"the order is {attempt.amount} {attempt.currency}"
        )
    if reason is not None:
        # The order's row first, as on every settling path, then the attempt as it is now:
        # ``attempt`` was read before SumUp was asked, and one settled since (a review ended
        # from what SumUp said, apps.orders.review) makes this report nothing new: flagging
        # an order whose review just ended left it flagged, its money going back, for ever.
        # Money reported for an attempt settled unpaid since (EXPIRED) is news: flagged.
        locked, now = await run_together(
            session,
            (_LOCK_ORDER, {"order_id": order.id}),
            (_ATTEMPT_STATUS, {"attempt_id": attempt.id}),
        )
        settled_since = now[0].status if now else None
        if (
            locked
            and settled_since not in (None, *OPEN_ATTEMPT_STATES)
            and (remote.status != "PAID" or settled_since == "PAID")
        ):
            return Applied(locked[0].status, settled_since)
        await flag_order(session, order.id, reason)
        return Applied(locked[0].status if locked else order.status, attempt.status, flagged=True)

    # The order's row first, then the attempt's, then a refund's, on every path (audit s21 F4):
    # pay again and the expiry lock the order before they settle its attempt, so a report
    # that settled the attempt first and then waited on the order deadlocked with them. Each
    # its own statement (one CTE for several would lock them in an order PostgreSQL does not
    # promise), sent together: PostgreSQL runs them in the order given, in one round trip.
    # NO KEY UPDATE, as the transition's UPDATE takes: a checkout replay's KEY SHARE
    # (held while it holds bookings again) does not keep it waiting. What it reads is the
    # order as it is now: ``order`` was read before SumUp was asked, and a supersede may have
    # committed since (its status and what replaced it come from here). A payment's
    # transition to paid (if the order is still pending and not flagged) comes last.
    calls: list[Call] = [
        (_LOCK_ORDER, {"order_id": order.id}),
        (
            _SETTLE_ATTEMPT,
            {
                "attempt_id": attempt.id,
                "remote_status": remote.status,
                "remote_code": remote.transaction_code,
                "remote_transaction": remote.transaction_id,
            },
        ),
    ]
    if remote.status == "PAID":
        calls.append((_PAY_ORDER, {"order_id": order.id, "attempt_id": attempt.id}))
    locked, settled, *transition = await run_together(session, *calls)
    if not locked:
        raise ValueError(f"order {order.id} does not exist")
    current = locked[0]
    if settled:
        _now_says(
            session,
            attempt,
            status=remote.status,
            transaction_code=remote.transaction_code,
            transaction_id=remote.transaction_id,
        )
    if remote.status != "PAID":
        # Flagged as the locked row says: ``order`` may be older than a review that ended.
        return Applied(order.status, attempt.status, flagged=current.flagged)

    paid_items = _paid_items(transition[0])
    if paid_items is not None:
        _now_says(session, order, status="paid")
        await _enqueue_after_payment(session, order, paid_items)
        return Applied("paid", "PAID", paid=True)

    # Not paid now: ``current`` (locked above) is how the order stands.
    if current.flagged:
        return Applied(current.status, "PAID", flagged=True)
    # Settled paid before this report: by an earlier report, which saw to its money in the
    # same transaction, or by another path since this one read it (a review that ended,
    # apps.orders.review, having given its money back or found it given back). A refund here
    # would ask for it twice.
    if (
        not settled
        and current.status != "pending"
        and await _ATTEMPT_STATUS.scalar(session, {"attempt_id": attempt.id}) == "PAID"
    ):
        return Applied(current.status, "PAID")
    if attempt.id == current.paid_attempt_id:
        # The payment the order was paid with, reported again: by a report that read the
        # attempt open while the transition recorded it, made by a report of the attempt held
        # EXPIRED (closed by pay again as SumUp took its payment). Whatever became of the order
        # since (its bookings not confirmed, a review) saw to that money; it is not a late one.
        return Applied(current.status, "PAID")
    if current.status in (*CLOSED_UNPAID_STATES, "refund_due", "refunded"):
        # Money for an order that will not be honoured (a tab left open on a superseded order,
        # a payment after the order expired): it goes back.
        reason = _late_reason(current)
        if not await record_refund(session, order, attempt, LATE_PAYMENT, reason):
            return Applied(current.status, "PAID")  # this payment's refund is already known
        await session.execute(
            update(Order)
            .where(Order.id == order.id)
            .values(status="refund_due", updated_at=func.now())
        )
        return Applied("refund_due", "PAID", refund_due=True)
    if (
        current.status == "paid"
        and current.paid_attempt_id is None
        and not settled
        and await paid_attempt_id(session, order.id, None) is None
    ):
        # Paid by the release before orders 0015, which recorded no attempt, and none held
        # PAID: this one, held closed, may be the payment it was paid with (reported again
        # after pay again closed it as SumUp took it). Neither kept nor given back here.
        reason = (
            f"SumUp reports checkout {remote.id} paid, which orders holds closed, for an order "
            "paid without a record of the checkout it was paid with: it may be that one"
        )
        await flag_order(session, order.id, reason)
        return Applied("paid", "PAID", flagged=True)
    if current.status == "paid":
        # Paid twice for one order (SumUp took two attempts): the second payment goes back.
        # Not the recorded one (above), nor inferred: this report settled the attempt (it was
        # open, so it paid nothing before) or found it closed while another paid the order.
        await record_refund(
            session, order, attempt, LATE_PAYMENT, "a second payment of an order already paid"
        )
        return Applied("paid", "PAID", refund_due=True)
    return Applied(current.status, "PAID")


async def flag_order(session: AsyncSession, order_id: int, reason: str) -> bool:
    """The order is left to a person (``rose orders attention``), for ``reason``; an order
    flagged already keeps its first reason. Whether it was flagged now."""
    flagged = await session.scalar(
        update(Order)
        .where(Order.id == order_id, Order.flagged.is_(False))
        .values(flagged=True, flag_reason=reason, updated_at=func.now())
        .returning(Order.id)
    )
    if flagged is not None:
        logger.warning("order %s flagged: %s", order_id, reason)
    return flagged is not None


def unknown_status_said(remote: RemoteCheckout) -> str:
    """Why an order is left to a person when SumUp reports its checkout in a status orders
    does not know."""
    return (
        f"SumUp reports checkout {remote.id} {remote.status}, a status orders does not know: "
        "whether it took the payment cannot be told; look at it in SumUp's dashboard (its "
        "review waits until SumUp reports PENDING, FAILED, PAID or EXPIRED)"
    )


def _late_reason(current: Any) -> str:
    """Why a payment goes back, from the order's locked row (``status``, ``superseded_by``)."""
    if current.status == "superseded":
        return f"paid after order {current.superseded_by} replaced it"
    if current.status in ("refund_due", "refunded"):
        return "a further payment of an order that is being refunded"
    return f"paid after the order was {current.status}"


async def paid_attempt_id(session: AsyncSession, order_id: int, recorded: int | None) -> int | None:
    """The id of the attempt a paid order was paid with: ``recorded``, its ``paid_attempt_id``
    (read with the order). An order the release before orders 0015 paid while this one rolled
    out recorded none: for it, :data:`PAID_WITH` (as 0015 filled in every order paid before
    it)."""
    if recorded is not None:
        return recorded
    return await session.scalar(
        select(PaymentAttempt.id)
        .where(PaymentAttempt.order_id == order_id, PAID_WITH)
        .order_by(PaymentAttempt.number)
        .limit(1)
    )


# The first of these (by number) is the attempt a paid order that recorded none was paid with:
# held PAID, and no payment that goes back as another's (a second payment's or a review's
# refund is never recorded for the attempt an order was paid with). Orders 0015 fills in the
# orders paid before it by the same rule, in SQL.
PAID_WITH = and_(
    PaymentAttempt.status == "PAID",
    ~exists().where(
        Refund.attempt_id == PaymentAttempt.id,
        or_(
            Refund.reason_key.startswith(f"{LATE_PAYMENT}:"),
            Refund.reason_key.startswith(f"{REVIEW}:"),
        ),
    ),
)


async def refund_recorded_for(session: AsyncSession, attempt_id: int) -> bool:
    """A refund of this attempt is recorded (of any kind): its money goes back once."""
    found = await session.scalar(select(Refund.id).where(Refund.attempt_id == attempt_id).limit(1))
    return found is not None


async def record_refund(
    session: AsyncSession,
    order: OrderInHand,
    attempt: AttemptInHand,
    kind: str,
    reason: str,
    amount: Decimal | None = None,
    currency: str | None = None,
) -> bool:
    """Money that must go back, once per order, kind and attempt (the attempt's amount and
    currency unless given: what SumUp took, when that differs). False if already recorded."""
    refunded = money(amount if amount is not None else attempt.amount)
    currency = currency or attempt.currency
    if refunded <= 0:
        return False
    key = f"{kind}:{attempt.id}"
    result = await session.execute(
        insert(Refund)
        .values(
            order_id=order.id,
            attempt_id=attempt.id,
            reason_key=key,
            reason=reason,
            amount=refunded,
            currency=currency,
        )
        .on_conflict_do_nothing(index_elements=["order_id", "reason_key"])
        .returning(Refund.id)
    )
    created = result.first() is not None
    if created:
        logger.warning("order %s: refund of %s %s due: %s", order.id, refunded, currency, reason)
    return created


@dataclass(frozen=True)
class PaidItem:
    kind: str
    source_id: int
    quantity: int
    cart_line_ids: list[int] | None


def _pay_order() -> Select[Any]:
    # Core columns, not the mapped class: the same SQL without the ORM's work on every call.
    orders = table_of(Order)
    attempts = table_of(PaymentAttempt)
    # The attempt it is paid with, if it is one of the order's own (None: nothing to pay).
    paid_with = (
        select(attempts.c.id)
        .where(
            attempts.c.id == bindparam("attempt_id", type_=BigInteger),
            attempts.c.order_id == orders.c.id,
        )
        .scalar_subquery()
    )
    transition = (
        update(orders)
        .where(
            orders.c.id == bindparam("order_id"),
            orders.c.status == "pending",
            orders.c.flagged.is_(False),
        )
        .values(status="paid", paid_at=func.now(), paid_attempt_id=paid_with, updated_at=func.now())
        .returning(orders.c.id)
        .cte("paid_order")
    )
    items = table_of(OrderItem)
    return select(
        transition.c.id,
        items.c.kind,
        items.c.source_id,
        items.c.quantity,
        items.c.cart_line_ids,
    ).select_from(transition.outerjoin(items, items.c.order_id == transition.c.id))


_PAY_ORDER = DirectStatement(_pay_order())


async def _record_payment(session: AsyncSession, order: OrderInHand) -> list[PaidItem] | None:
    """The order's transition to paid (if it is still pending and not flagged), in one
    statement that also reads the order's items for what follows a payment (they never change
    after the order is created). None when the order did not transition."""
    return _paid_items(await _PAY_ORDER.rows(session, {"order_id": order.id, "attempt_id": None}))


def _paid_items(rows: list[DirectRow]) -> list[PaidItem] | None:
    """The items of the order :data:`_PAY_ORDER` made paid; None when it did not."""
    if not rows:
        return None
    return [
        PaidItem(row.kind, row.source_id, row.quantity, row.cart_line_ids)
        for row in rows
        if row.kind is not None
    ]


async def pay_with_nothing_to_pay(session: AsyncSession, order: OrderInHand) -> None:
    """An order whose every line is free is paid as it is made, in its creation's transaction:
    the same transition and after-payment messages as a payment (events confirms its bookings,
    cart lets go of its lines), and no SumUp checkout, since there is nothing to take."""
    paid_items = await _record_payment(session, order)
    if paid_items is None:
        raise RuntimeError(f"order {order.id} was made in this transaction but is not pending")
    _now_says(session, order, status="paid")
    await _enqueue_after_payment(session, order, paid_items)


def clear_cart_key(order_id: int) -> str:
    return f"orders:{order_id}:clear-cart"


def confirm_bookings_key(order_id: int) -> str:
    return f"orders:{order_id}:confirm-bookings"


def release_bookings_key(order_id: int) -> str:
    return f"orders:{order_id}:release-bookings"


def let_go_bookings_key(order_id: int) -> str:
    return f"orders:{order_id}:let-go-bookings"


async def enqueue_release_of_bookings(
    session: AsyncSession, order_id: int, *, paid_back: bool = False
) -> bool:
    """An expired order's bookings: events ends the holds made for it now, not when they would
    end (HOLD_AFTER_PAYABLE past its payable time), or puts a booking back on its cart's hold
    while that still runs. In the expiry's transaction; False when the order has no bookings.

    ``paid_back``: a paid order whose payment SumUp gave back whole (a review found it): the
    bookings confirmed for it are let go too (``ReleaseForOrder.paid_back``)."""
    booked = await session.scalar(
        select(
            exists().where(
                OrderItem.order_id == order_id,
                OrderItem.kind.in_(("calendar_entry", "ticket")),
            )
        )
    )
    if not booked:
        return False
    key = let_go_bookings_key(order_id) if paid_back else release_bookings_key(order_id)
    return await enqueue(
        session,
        outbox,
        events.release_for_order,
        events.ReleaseForOrder(order_id=order_id, paid_back=True)
        if paid_back
        else events.ReleaseForOrder(order_id=order_id),
        idempotency_key=key,
    )


def give_back_superseded_key(order_id: int) -> str:
    return f"orders:{order_id}:give-back-superseded"


async def enqueue_give_back_of_superseded(
    session: AsyncSession, order_ids: Sequence[int]
) -> list[str]:
    """Orders just superseded (audit s21 F2): the bookings still held for them (those the new
    order does not hold) would stay held for an order that can no longer be paid until
    HOLD_AFTER_PAYABLE past its payable time, about an hour. Events gives each back to the hold
    it had before the order's (``rolled_back``): the buyer's cart's, no longer than it was;
    ending it instead would take the booking out of the cart. Events then refuses any later
    hold for the order, as none can come (a replay of its checkout makes a new order). In the
    superseding transaction, delivered after its commit; the keys queued (orders without
    bookings need none)."""
    if not order_ids:
        return []
    booked = await session.scalars(
        select(OrderItem.order_id)
        .where(
            OrderItem.order_id.in_(list(order_ids)),
            OrderItem.kind.in_(("calendar_entry", "ticket")),
        )
        .distinct()
        .order_by(OrderItem.order_id)
    )
    keys = []
    for order_id in booked:
        key = give_back_superseded_key(order_id)
        await enqueue_give_back(session, order_id, key)
        keys.append(key)
    return keys


async def enqueue_give_back(session: AsyncSession, order_id: int, key: str) -> None:
    """Queue events' release-for-order with ``rolled_back`` for ``order_id`` (its bookings go
    back to the hold they had before it) in ``session``'s transaction, under ``key``."""
    await enqueue(
        session,
        outbox,
        events.release_for_order,
        events.ReleaseForOrder(order_id=order_id, rolled_back=True),
        idempotency_key=key,
    )


def after_payment_keys(order_id: int) -> tuple[str, ...]:
    """The outbox messages a payment of the order queues (by their idempotency keys)."""
    return clear_cart_key(order_id), confirm_bookings_key(order_id)


async def _placed_at(session: AsyncSession, order: OrderInHand) -> datetime | None:
    """When the order was placed: held by the webhook's row and a loaded order (no round
    trip); read for one made in this transaction, whose row has it from the database."""
    if isinstance(order, OrderRow):
        return order.created_at
    if "created_at" not in sa_inspect(order).unloaded and order.created_at is not None:
        return order.created_at
    return await session.scalar(select(Order.created_at).where(Order.id == order.id))


async def _enqueue_after_payment(
    session: AsyncSession, order: OrderInHand, items: list[PaidItem]
) -> None:
    """The effects of a payment elsewhere, in the transaction of the transition: queued with its
    COMMIT (nothing in the transaction reads them; a webhook's commit sends them in its round
    trip)."""
    products = [item for item in items if item.kind == "product"]
    placed_at: datetime | msgspec.UnsetType = msgspec.UNSET
    if any(not item.cart_line_ids for item in products):
        # Lines that name no cart lines (orders moved from the monolith) clear by product: only
        # those added before the order are its. Sent only then, so that an order naming its
        # lines is still read by a cart from before the field (a rollout: docs/deployment.md).
        placed_at = await _placed_at(session, order) or msgspec.UNSET
    clear = ClearCartForOrder(
        order_id=order.id,
        user_id=order.user_id,
        session_id=order.session_id,
        page_post_id=order.page_post_id,
        product_ids=sorted({item.source_id for item in products}),
        lines=[
            PaidLine(
                product_id=item.source_id,
                quantity=item.quantity,
                cart_line_ids=list(item.cart_line_ids or ()),
            )
            for item in products
        ],
        placed_at=placed_at,
    )
    await enqueue_at_commit(
        session,
        outbox,
        cart.clear_cart_for_order,
        clear,
        idempotency_key=clear_cart_key(order.id),
    )
    entry_ids = sorted(item.source_id for item in items if item.kind == "calendar_entry")
    ticket_ids = sorted(item.source_id for item in items if item.kind == "ticket")
    if entry_ids or ticket_ids:
        await enqueue_at_commit(
            session,
            outbox,
            events.confirm_for_order,
            events.ConfirmForOrder(
                order_id=order.id,
                entry_ids=entry_ids,
                ticket_ids=ticket_ids,
                user_id=order.user_id,
                session_id=order.session_id,
            ),
            idempotency_key=confirm_bookings_key(order.id),
        )


async def bookings_not_confirmed(
    session: AsyncSession, payload: Mapping[str, Any], answer: events.ConfirmResult
) -> bool:
    """Events' answer to confirm-for-order (an outbox reply), in the delivery's transaction.
    Bookings it could not confirm for the paid order (removed from the cart, or taken after
    their hold ended):

    - the order lets go of its claims on them: a paid order's claim refuses every later order
      of the same booking, and an entry's id is the same place for the next buyer;
    - its lines of them record when (``unconfirmed_at``): what the order's pages name;
    - their price is money that must go back, not a log line (a refund is recorded);
    - an order none of whose lines was confirmed does not say it is: a paid one is being
      refunded (``refund_due``), one with nothing to pay is cancelled.

    True when a refund is owed."""
    entry_ids = set(answer.unconfirmed.entry_ids)
    ticket_ids = set(answer.unconfirmed.ticket_ids)
    if not entry_ids and not ticket_ids:
        return False
    order_id = int(payload["order_id"])
    # The order's row first, as every path that writes it takes it (audit s21 F4): a review
    # ending meanwhile decides its status after this commits, or before this reads it
    # (review 4: it read neither the refund nor the lines, and the order stayed paid).
    order = await session.scalar(
        select(Order)
        .where(Order.id == order_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if order is None:
        return False
    await session.execute(
        delete(OrderClaim).where(
            OrderClaim.order_id == order_id,
            or_(
                and_(OrderClaim.kind == "calendar_entry", OrderClaim.ref_id.in_(entry_ids)),
                and_(OrderClaim.kind == "ticket", OrderClaim.ref_id.in_(ticket_ids)),
            ),
        )
    )
    items = list(
        await session.scalars(
            select(OrderItem).where(OrderItem.order_id == order_id).order_by(OrderItem.id)
        )
    )
    lost = [
        item
        for item in items
        if (item.kind == "calendar_entry" and item.source_id in entry_ids)
        or (item.kind == "ticket" and item.source_id in ticket_ids)
    ]
    if lost:
        # What the order's pages say, for any order: the fact, not an inference.
        await session.execute(
            update(OrderItem)
            .where(
                OrderItem.id.in_([item.id for item in lost]),
                OrderItem.unconfirmed_at.is_(None),
            )
            .values(unconfirmed_at=func.now())
        )
    # Nothing of the order is honoured: every line lost now, or by an earlier answer.
    nothing_left = all(item in lost or item.unconfirmed_at is not None for item in items)
    paid_with = await paid_attempt_id(session, order_id, order.paid_attempt_id)
    paid_attempt = None if paid_with is None else await session.get(PaymentAttempt, paid_with)
    if paid_attempt is None:
        if order.total == 0 and nothing_left:
            cancelled = await session.scalar(
                update(Order)
                .where(Order.id == order_id, Order.status == "paid")
                .values(status="cancelled", updated_at=func.now())
                .returning(Order.id)
            )
            if cancelled is not None:
                logger.warning("order %s: nothing could be confirmed; cancelled", order_id)
        return False
    amount = sum((item.unit_price * item.quantity for item in lost), Decimal(0))
    titles = ", ".join(line.named for line in order_lines(lost))
    await record_refund(
        session,
        order,
        paid_attempt,
        UNCONFIRMED_BOOKINGS,
        f"bookings that could not be confirmed: {titles}",
        amount,
    )
    if nothing_left:
        await settle_nothing_confirmed(session, order_id)
    return True


# A paid order, not flagged, none of whose lines events confirmed, whose money for them goes
# back: being refunded while a refund of it is not done, else refunded. Orders 0018 says the
# same of the orders recorded before it.
_NOTHING_CONFIRMED = text(
    """
    UPDATE orders.orders AS o
    SET status = CASE
            WHEN EXISTS (
                SELECT FROM orders.refunds AS r WHERE r.order_id = o.id AND r.status <> 'done'
            ) THEN 'refund_due'
            ELSE 'refunded'
        END,
        updated_at = now()
    WHERE o.id = :order_id
      AND o.status = 'paid'
      AND NOT o.flagged
      AND EXISTS (SELECT FROM orders.order_items AS i WHERE i.order_id = o.id)
      AND NOT EXISTS (
          SELECT FROM orders.order_items AS i
          WHERE i.order_id = o.id AND i.unconfirmed_at IS NULL
      )
      AND EXISTS (
          SELECT FROM orders.refunds AS r
          WHERE r.order_id = o.id AND r.reason_key LIKE :unconfirmed_refunds
      )
    RETURNING o.status
    """
)


async def settle_nothing_confirmed(session: AsyncSession, order_id: int) -> str | None:
    """A paid order none of whose bookings events could confirm, its money for them going
    back, does not say it is paid: ``refund_due`` while a refund of it is not done, else
    ``refunded``. Said where that becomes true: events' answer, a refund of them done, the
    end of a review (a flagged order is left to it). Its new status, or None when it is not
    such an order."""
    return await session.scalar(
        _NOTHING_CONFIRMED,
        {"order_id": order_id, "unconfirmed_refunds": f"{UNCONFIRMED_BOOKINGS}:%"},
    )


async def refresh_attempt(
    session: AsyncSession,
    order: OrderInHand,
    attempt: AttemptInHand,
    gateway: SumUpGateway,
    accounts: MerchantAccounts | None = None,
) -> Applied:
    account = await (accounts or MerchantAccounts()).of(session, order)
    try:
        remote = await gateway.get_checkout(account, attempt.sumup_checkout_id)
    except CheckoutNotFound:
        logger.warning("checkout %s of order %s is unknown to SumUp", attempt.id, order.id)
        return Applied(order.status, attempt.status)
    return await apply_checkout(session, order, attempt, remote)


async def refresh_reported_attempt(
    session: AsyncSession,
    order: OrderInHand,
    attempt: AttemptInHand,
    gateway: SumUpGateway,
    recent: RecentMerchantAccounts,
    early: EarlyCheckoutRead | None = None,
) -> Applied:
    """:func:`refresh_attempt` for a webhook: with the page config's account this process read
    lately when it has one (no FDW read; the ``early`` read's answer when it was sent with that
    account), else (or when SumUp refuses that key, or does not know the checkout under it)
    with the account blog holds now."""
    config_id = payment_config_of(order)
    remembered = recent.recall(config_id)
    if remembered is not None and remembered.merchant_code != order.merchant_code:
        remembered = None  # the page has switched merchants: that key cannot see this checkout
    if remembered is not None:
        try:
            if early is not None and early.serves(config_id, remembered):
                remote = await early.answer
            else:
                remote = await gateway.get_checkout(remembered, attempt.sumup_checkout_id)
        except CheckoutNotFound:
            recent.forget(config_id)
        except PaymentProviderError as exc:
            if not exc.key_refused:
                raise
            recent.forget(config_id)
        else:
            return await apply_checkout(session, order, attempt, remote)
    account = await merchant_account(session, order, new_checkout=False)
    recent.learn(config_id, account)
    return await refresh_attempt(
        session, order, attempt, gateway, MerchantAccounts({config_id: account})
    )


async def close_at_sumup(
    gateway: SumUpGateway, account: MerchantAccount, checkout_id: str
) -> tuple[RemoteCheckout, bool]:
    """Deactivate a checkout so it can take no money: SumUp's answer, and whether it was closed
    here. When SumUp cannot or will not close it, or answers that it does not know it, it is
    read: one no longer open (paid, expired) is the answer (money it already took must not
    wait for SumUp to let us close it), one still open re-raises. :class:`CheckoutNotFound`
    propagates when the read does not find it either."""
    try:
        return await gateway.deactivate_checkout(account, checkout_id), True
    except (PaymentProviderUnavailable, PaymentProviderError, CheckoutNotFound):
        # A 404 to the DELETE may be SumUp's answer for a checkout it expired itself (its
        # docs do not say): only one the read does not find either is unknown to SumUp.
        remote = await gateway.get_checkout(account, checkout_id)
        if remote.status in OPEN_ATTEMPT_STATES:
            raise
        return remote, False


async def close_attempt(
    session: AsyncSession,
    order: Order,
    attempt: PaymentAttempt,
    gateway: SumUpGateway,
    accounts: MerchantAccounts | None = None,
) -> Applied:
    """Deactivate an open checkout so it can take no money; one SumUp already processed comes
    back PAID and is applied (a late payment becomes a refund)."""
    account = await (accounts or MerchantAccounts()).of(session, order)
    try:
        remote, _ = await close_at_sumup(gateway, account, attempt.sumup_checkout_id)
    except CheckoutNotFound:
        # SumUp keeps every checkout it made: one it does not know under the key of the
        # order's merchant says the key is not that merchant's (an editor pasted a key of
        # another of their merchants into the page's settings, blog cannot tell), and proves
        # nothing of the payment, as under another merchant's key (MerchantKeyGone). Held
        # EXPIRED, a payment it had taken was never read again (the order expired, its goods
        # released, nothing owed back): the order is left to a person instead, its attempt
        # as it was (rose orders end-review reads it with the key put right). The order
        # first, as ever, and the attempt read again under its lock: one a review settled
        # since this close read it flags nothing.
        await _LOCK_ORDER.first(session, {"order_id": order.id})
        now = await session.scalar(
            select(PaymentAttempt.status).where(PaymentAttempt.id == attempt.id)
        )
        if now not in OPEN_ATTEMPT_STATES:
            return Applied(order.status, now or attempt.status)
        await flag_order(
            session,
            order.id,
            f"SumUp does not know checkout {attempt.sumup_checkout_id} under the key page "
            f"config {payment_config_of(order)} holds for merchant {account.merchant_code}: "
            "the key may be another merchant's, and a payment may be waiting on SumUp: put the "
            "key right before ending the review, which holds a checkout SumUp does not know "
            "EXPIRED (a local sandbox restarted since forgets its checkouts: end it as it is)",
        )
        return Applied(order.status, attempt.status, flagged=True)
    return await apply_checkout(session, order, attempt, remote, closing=True)


async def open_attempts(session: AsyncSession, order_id: int) -> list[PaymentAttempt]:
    return list(
        await session.scalars(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.order_id == order_id,
                PaymentAttempt.status.in_(OPEN_ATTEMPT_STATES),
            )
            .order_by(PaymentAttempt.number)
        )
    )


async def close_order_checkouts(
    session: AsyncSession,
    order_id: int,
    gateway: SumUpGateway,
    accounts: MerchantAccounts | None = None,
) -> list[Applied]:
    """Close every open checkout of an order that must no longer take money (superseded,
    expired, cancelled). The caller commits."""
    order = await session.get(Order, order_id)
    if order is None or order.status not in CLOSED_UNPAID_STATES:
        return []
    return [
        await close_attempt(session, order, attempt, gateway, accounts)
        for attempt in await open_attempts(session, order_id)
    ]


# -- refunds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefundOutcome:
    refund_id: int
    status: str


async def settle_refund(
    session: AsyncSession,
    refund_id: int,
    gateway: SumUpGateway,
    lease: timedelta,
    accounts: MerchantAccounts | None = None,
) -> RefundOutcome | None:
    """Move one refund on: ask SumUp (recording the request first) or, when an earlier request's
    outcome is unknown, read the transaction back. Commits. None when it is not ours to move
    now: another process holds it, or asked SumUp less than ``lease`` ago (its call may still
    be on its way; asking again now could give the money back twice)."""
    refund = await session.scalar(
        select(Refund)
        .where(
            Refund.id == refund_id,
            or_(
                Refund.status == "due",
                and_(Refund.status == "requested", Refund.updated_at < func.now() - lease),
            ),
        )
        .with_for_update(skip_locked=True)
    )
    # One settler per payment from here until its request is on record: two refunds of one
    # payment asked at once, both answers lost, could not be told apart (below).
    if refund is None or not await session.scalar(_payment_lock(refund.attempt_id)):
        await session.rollback()
        return None
    if refund.status == "due":
        waiting_on = await _request_unknown_beside(session, refund)
        if waiting_on is not None:
            return await _refund_waits(
                session,
                refund,
                f"waits for refund {waiting_on} of the same payment, asked with its outcome "
                "unknown",
            )
    order = await session.get(Order, refund.order_id)
    attempt = await session.get(PaymentAttempt, refund.attempt_id)
    assert order is not None
    assert attempt is not None
    account = await (accounts or MerchantAccounts()).of(session, order)
    transaction_id = attempt.transaction_id or await _transaction_id(
        gateway, account, attempt, session
    )
    if transaction_id is None:
        return await _refund_failed(session, refund, order, "SumUp reports no paid transaction")

    # What SumUp had refunded when the earlier request (if any) was made.
    earlier_before = refund.sumup_refunded_before
    seen: MoneyBack | None
    if refund.status == "requested":
        # An earlier request's outcome is unknown: SumUp's transaction says whether it happened.
        try:
            seen = await gateway.money_back(account, transaction_id)
        except PaymentProviderError as exc:
            if exc.sumup_status == 401:
                # Then this read settles it; a 403 or 404 is this key not shown this
                # transaction: a person.
                await _refund_key_refused(session, refund, exc)
            return await _refund_failed(
                session, refund, order, f"SumUp would not show the transaction: {exc}"
            )
        if seen.all_given_back:
            return await _refund_done(session, refund, order)
        # A refund SumUp shows in a status orders does not know may be this request's: what
        # else SumUp refunded since cannot be told from it.
        if seen.refund_status_unknown is None and await _request_went_through(
            session, refund, seen, earlier_before
        ):
            return await _refund_done(session, refund, order)
        if (undecided := _undecided(seen)) is not None:
            return await _refund_waits(session, refund, undecided)
    else:
        # Never asked: all of the payment may have gone back already by other means (a person
        # in SumUp's dashboard, the card issuer's charge-back). Asking then would be refused,
        # or could give it back twice. Part of it says nothing of this refund: it is asked.
        try:
            seen = await _money_back_if_known(gateway, account, transaction_id)
        except PaymentProviderError as exc:
            await _refund_key_refused(session, refund, exc)
        if seen is not None and seen.all_given_back:
            logger.warning(
                "order %s: refund %s of %s settled unasked: SumUp gave back all %s of the "
                "payment already (in its dashboard, or a charge-back)",
                order.id,
                refund.id,
                refund.amount,
                seen.taken,
            )
            return await _refund_done(session, refund, order)
        if seen is not None and (undecided := _undecided(seen)) is not None:
            return await _refund_waits(session, refund, undecided)
    # Read just now, before the request, with the payment's lock held: should its answer be
    # lost, only what SumUp refunds from here on can be this request's.
    refund.sumup_refunded_before = None if seen is None else seen.refunded
    refund.status = "requested"
    refund.tries += 1
    # The request's lease runs from now, not from this transaction's start (now()): the reads
    # of SumUp above may have taken as long as the lease itself.
    refund.updated_at = func.clock_timestamp()
    await session.commit()  # the intent is on record before money moves

    try:
        await gateway.refund(account, transaction_id, refund.amount)
    except PaymentProviderUnavailable as exc:
        refund.last_error = str(exc)[:2000]
        await session.commit()
        return RefundOutcome(refund.id, "requested")
    except RefundRefused as exc:
        if exc.status == 401:
            # Nothing was made (SumUp took no request of the key): the read-back settles it
            # once the key is back, asking again if it is not.
            await _refund_key_refused(session, refund, PaymentProviderError(exc.detail, 401))
        if exc.status == 409:
            # Refused as nothing (or too little) is left: all of it went back meanwhile, or an
            # earlier request of this refund went through after all. Else a person decides.
            after = await _money_back_if_known(gateway, account, transaction_id)
            if after is not None and (
                after.all_given_back
                or (
                    refund.tries > 1
                    and await _request_went_through(session, refund, after, earlier_before)
                )
            ):
                return await _refund_done(session, refund, order)
        return await _refund_failed(session, refund, order, str(exc))
    return await _refund_done(session, refund, order)


CHARGE_BACK_PENDING = "a charge-back of the payment is pending at SumUp: waiting for it"


def _undecided(seen: MoneyBack) -> str | None:
    """Why the payment's money back cannot be told now (asked, it could go back twice;
    settled, not at all): a refund waits, this its ``last_error``. None when it can."""
    if seen.charge_back_pending:
        return CHARGE_BACK_PENDING
    if seen.refund_status_unknown is not None:
        return (
            f"a refund of the payment is {seen.refund_status_unknown} at SumUp, a status "
            "orders does not know: waiting for a person to look at it in SumUp's dashboard"
        )
    return None


PAYMENT_LOCK_NAMESPACE = "orders-refund-payment"


def _payment_lock(attempt_id: int) -> Select[tuple[bool]]:
    """The payment's refund lock, for this transaction, if no other settler holds it."""
    return select(
        func.pg_try_advisory_xact_lock(
            func.hashtext(PAYMENT_LOCK_NAMESPACE), func.hashtext(str(attempt_id))
        )
    )


async def _transaction_id(
    gateway: SumUpGateway, account: MerchantAccount, attempt: PaymentAttempt, session: AsyncSession
) -> str | None:
    remote = await gateway.get_checkout(account, attempt.sumup_checkout_id)
    # Refunded in part since (a person, in SumUp's dashboard), it is REFUNDED, not SUCCESSFUL:
    # still the transaction what goes back is asked of.
    transaction_id = remote.transaction_id or remote.paid_transaction_id
    if transaction_id:
        attempt.transaction_id = transaction_id
        await session.flush()
    return transaction_id


async def _request_unknown_beside(session: AsyncSession, refund: Refund) -> int | None:
    """Another refund of the same payment asked with its outcome unknown: this one waits until
    that is settled. SumUp's total tells one unknown request from none, not two: with both
    unknown, the money of one could settle the other, and the other be asked again."""
    return await session.scalar(
        select(Refund.id)
        .where(
            Refund.attempt_id == refund.attempt_id,
            Refund.id != refund.id,
            Refund.status == "requested",
        )
        .order_by(Refund.id)
        .limit(1)
    )


async def _request_went_through(
    session: AsyncSession, refund: Refund, back: MoneyBack, before: Decimal | None
) -> bool:
    """SumUp's transaction ``back`` shows the refund's request made: SumUp refunded at least
    its amount since ``before`` (its refunded total read right before the request; a sibling
    refund of the payment is never asked while this one's outcome is unknown). Without
    ``before`` (SumUp would not show the transaction then, or the request predates orders
    0016): :func:`given_back_for`, which a refund given in SumUp's dashboard can mislead."""
    if before is not None:
        return back.refunded - before >= refund.amount
    return await given_back_for(session, refund, back)


async def given_back_for(session: AsyncSession, refund: Refund, back: MoneyBack) -> bool:
    """SumUp has refunded at least what the transaction's settled refunds and this one add up
    to (``back`` read before the sum: a refund whose money SumUp shows was recorded
    ``requested`` before it was asked, so the sum read after it sees every settled one).
    Charge-backs are not counted: they are not what a request made; all of the payment gone
    back by one is :attr:`MoneyBack.all_given_back`'s."""
    settled = await session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.attempt_id == refund.attempt_id,
            Refund.id != refund.id,
            Refund.status == "done",
        )
    )
    return back.refunded >= money(Decimal(settled or 0) + refund.amount)


async def _money_back_if_known(
    gateway: SumUpGateway, account: MerchantAccount, transaction_id: str
) -> MoneyBack | None:
    """The transaction's money as SumUp says, None when SumUp refuses to tell (a 4xx): the
    refund is then asked as before this look existed. An outage raises (tried next pass), and
    so does a refused key (401: no request of it would be taken either)."""
    try:
        return await gateway.money_back(account, transaction_id)
    except PaymentProviderError as exc:
        if exc.sumup_status == 401:
            raise
        logger.warning("transaction %s unread before its refund: %s", transaction_id, exc)
        return None


async def _refund_key_refused(
    session: AsyncSession, refund: Refund, exc: PaymentProviderError
) -> NoReturn:
    """SumUp refuses the merchant's key itself (401: revoked in its dashboard), so every
    request of it alike, until a person gives the page a new one: the refund waits as it is
    (due, or requested with its outcome to be read back), SumUp's refusal its ``last_error``
    (what attention shows), and the pass warns once per merchant (raises ``exc``)."""
    refund.last_error = str(exc)[:2000]
    await session.commit()
    raise exc


async def _refund_waits(session: AsyncSession, refund: Refund, why: str) -> RefundOutcome:
    """Neither asked nor settled now (asked, the money could go back twice; settled, not at
    all): ``why`` is its ``last_error``, which ``rose orders attention`` shows; tried again
    next pass."""
    refund.last_error = why
    await session.commit()
    logger.warning("order %s: refund %s %s", refund.order_id, refund.id, why)
    return RefundOutcome(refund.id, refund.status)


async def _refund_done(session: AsyncSession, refund: Refund, order: Order) -> RefundOutcome:
    # The order's row first, before the refund's is written (and before the autoflush of the
    # changes below would write it): a late payment applied meanwhile locks the order, then
    # inserts this refund again (ON CONFLICT waits on a refund row being written). Writing the
    # refund first and then waiting on the order deadlocked with it (audit s21 F4).
    await session.execute(select(Order.id).where(Order.id == order.id).with_for_update())
    refund.status = "done"
    refund.refunded_at = func.now()
    refund.last_error = None
    refund.updated_at = func.now()
    await session.flush()
    owed = await session.scalar(
        select(func.count())
        .select_from(Refund)
        .where(Refund.order_id == order.id, Refund.status != "done")
    )
    if not owed:
        await session.execute(
            update(Order)
            .where(Order.id == order.id, Order.status == "refund_due")
            .values(status="refunded", updated_at=func.now())
        )
    if refund.reason_key.startswith(f"{UNCONFIRMED_BOOKINGS}:"):
        # Recorded by the release before, which left the order paid: refunded now.
        await settle_nothing_confirmed(session, order.id)
    await session.commit()
    logger.info("order %s: refund %s of %s done", order.id, refund.id, refund.amount)
    return RefundOutcome(refund.id, "done")


async def _refund_failed(
    session: AsyncSession, refund: Refund, order: Order, error: str
) -> RefundOutcome:
    refund.status = "failed"
    refund.last_error = error[:2000]
    refund.updated_at = func.now()
    await session.commit()
    logger.error("order %s: refund %s failed and needs a person: %s", order.id, refund.id, error)
    return RefundOutcome(refund.id, "failed")


async def refunds_to_settle(session: AsyncSession) -> list[int]:
    return list(
        await session.scalars(
            select(Refund.id).where(Refund.status.in_(("due", "requested"))).order_by(Refund.id)
        )
    )


def refunds_of(refunds: Iterable[Refund]) -> list[dict[str, Any]]:
    return [
        {
            "id": refund.id,
            "amount": str(refund.amount),
            "currency": refund.currency,
            "status": refund.status,
            "reason": refund.reason,
            "last_error": refund.last_error,
        }
        for refund in refunds
    ]
