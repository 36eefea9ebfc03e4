"""Domain logic of orders: create an order with its SumUp hosted checkout, apply what SumUp
reports (webhook, return page, recheck, reconciliation), start new payment attempts, list orders.

Rules that keep payments safe:
- an order and its items are a snapshot taken when it is created; nothing is re-read later;
- every status change is a conditional update (``pending -> paid`` happens once), so duplicated,
  late or out-of-order reports are harmless; ``FAILED`` is not final (the buyer may retry);
- what SumUp reports is trusted only after re-fetching the checkout and comparing amount and
  currency; a mismatch flags the order instead of marking it paid;
- the actions a payment triggers elsewhere (clear the cart, confirm bookings) go into the outbox
  in the same transaction as the transition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from sqlalchemy import exists, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased, selectinload

from apps.common.fdw import remote_read
from apps.common.outbox import enqueue
from apps.common.problems import Conflict, InvalidInput, NotFound
from apps.orders.models import (
    Order,
    OrderItem,
    PaymentAttempt,
    outbox,
    page_payment_configs,
)
from apps.orders.payments import (
    CheckoutNotFound,
    MerchantAccount,
    PaymentProviderError,
    RemoteCheckout,
    SumUpGateway,
)

logger = logging.getLogger("rose.orders")

CENT = Decimal("0.01")
MAX_REFERENCE_LENGTH = 64
DEFAULT_CHECKOUT_PREFIX = "rose-"
ORDERS_PER_PAGE = 20
SITE_CONTAINER = ("site", 0)

PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
# Amounts in major units; checked (>= 0, at most 2 decimals) in validate_order.
Money = Decimal
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Text255 = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


# -- the create-order payload (the plan's section 4.3) ----------------------------------------
class CartLine(msgspec.Struct, forbid_unknown_fields=True):
    product_id: PositiveId
    product_title: Text255
    product_slug: Text255
    product_regular_price: Money
    product_price_currency: Currency
    quantity: Quantity
    product_image: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    product_special_price: Money | None = None
    market_place_container_id: PositiveId | None = None

    @property
    def unit_price(self) -> Decimal:
        price = self.product_special_price
        return price if price is not None else self.product_regular_price


class BookingLine(msgspec.Struct, forbid_unknown_fields=True):
    """A calendar entry or a ticket (one of each per line)."""

    id: PositiveId
    title: Text255
    price: Money
    currency: Currency
    container_id: PositiveId | None = None


class CreateOrder(msgspec.Struct, forbid_unknown_fields=True):
    product_total: Money
    calendar_total: Money
    ticket_total: Money
    cart_items: list[CartLine] = []
    calendar_entries: list[BookingLine] = []
    tickets: list[BookingLine] = []
    user_id: PositiveId | None = None
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    page_post_id: PositiveId | None = None
    # The plan lets the caller pass these; orders builds both itself from APP_URL_ORDERS and
    # only accepts values that match (a caller may not send payments elsewhere).
    redirect_url: str | None = None
    webhook_base_url: str | None = None


class CreatedOrder(msgspec.Struct):
    order_id: int
    sumup_hosted_url: str
    page_config_id: int
    sumup_reference: str
    description: str


@dataclass(frozen=True)
class PaymentConfig:
    id: int
    container_type: str
    container_id: int
    account: MerchantAccount
    checkout_prefix: str


@dataclass(frozen=True)
class OrderUrls:
    """Where SumUp sends the webhook and where the buyer's browser comes back."""

    public_base: str

    def webhook(self, order_id: int) -> str:
        return f"{self.public_base}/checkout/webhook/{order_id}/"

    def return_page(self, order_id: int) -> str:
        return f"{self.public_base}/checkout/return/{order_id}/"


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT)


def validate_order(request: CreateOrder) -> str:
    """Check lines, totals and currencies; returns the order's currency."""
    _check_amounts(request)
    if not (request.cart_items or request.calendar_entries or request.tickets):
        raise InvalidInput("an order needs at least one line", field="cart_items")
    if request.user_id is None and request.session_id is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    currencies = {line.product_price_currency for line in request.cart_items}
    currencies |= {line.currency for line in (*request.calendar_entries, *request.tickets)}
    if len(currencies) != 1:
        raise InvalidInput(
            f"all lines must be in one currency, not {', '.join(sorted(currencies))}",
            field="currency",
        )
    for field, stated, lines in (
        (
            "product_total",
            request.product_total,
            [line.unit_price * line.quantity for line in request.cart_items],
        ),
        ("calendar_total", request.calendar_total, [e.price for e in request.calendar_entries]),
        ("ticket_total", request.ticket_total, [t.price for t in request.tickets]),
    ):
        computed = _money(sum(lines, Decimal(0)))
        if _money(stated) != computed:
            raise InvalidInput(
                f"{field} is {_money(stated)} but its lines add up to {computed}", field=field
            )
    return currencies.pop()


def _check_amount(field: str, value: Decimal | None) -> None:
    if value is None:
        return
    if not value.is_finite() or value < 0 or value != value.quantize(CENT):
        raise InvalidInput(f"{field} must be an amount >= 0 with at most 2 decimals", field=field)


def _check_amounts(request: CreateOrder) -> None:
    for field in ("product_total", "calendar_total", "ticket_total"):
        _check_amount(field, getattr(request, field))
    for line in request.cart_items:
        _check_amount("product_regular_price", line.product_regular_price)
        _check_amount("product_special_price", line.product_special_price)
    for line in (*request.calendar_entries, *request.tickets):
        _check_amount("price", line.price)


def _check_urls(request: CreateOrder, urls: OrderUrls) -> None:
    if request.webhook_base_url is not None and not request.webhook_base_url.rstrip("/").startswith(
        urls.public_base
    ):
        raise InvalidInput(
            f"webhook_base_url must be this service's public URL {urls.public_base}",
            field="webhook_base_url",
        )
    if request.redirect_url is not None and not request.redirect_url.startswith(urls.public_base):
        raise InvalidInput(
            f"redirect_url must be on this service's public URL {urls.public_base}",
            field="redirect_url",
        )


def checkout_reference(prefix: str, order_id: int, attempt: int) -> str:
    reference = f"{prefix}{order_id}-{attempt}"
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise InvalidInput(
            f"checkout reference {reference!r} is longer than SumUp's 64 characters",
            field="sumup_checkout_prefix",
        )
    return reference


# -- page configs, through the FDW edge orders <- blog ----------------------------------------
async def resolve_payment_config(
    session: AsyncSession, page_post_id: int | None, containers: set[int]
) -> PaymentConfig:
    """The page's config when the order belongs to one page, else the site-wide default; a page
    without SumUp settings falls back to the site default too."""
    candidates: list[tuple[str, int]] = []
    if page_post_id is not None:
        candidates.append(("page", page_post_id))
    elif len(containers) == 1:
        candidates.append(("page", next(iter(containers))))
    candidates.append(SITE_CONTAINER)
    table = page_payment_configs
    # No savepoint: nothing can go on without the config, a failure ends the transaction.
    async with remote_read(session, "blog", isolate=False):
        rows = (
            await session.execute(
                select(table).where(
                    tuple_(table.c.container_type, table.c.container_id).in_(candidates)
                )
            )
        ).all()
    by_container = {(row.container_type, row.container_id): row for row in rows}
    for candidate in candidates:
        row = by_container.get(candidate)
        if row is not None and row.sumup_merchant_code and row.sumup_api_key:
            return PaymentConfig(
                id=row.id,
                container_type=row.container_type,
                container_id=row.container_id,
                account=MerchantAccount(row.sumup_merchant_code, row.sumup_api_key),
                checkout_prefix=row.sumup_checkout_prefix or DEFAULT_CHECKOUT_PREFIX,
            )
    raise Conflict(
        "Payments are not configured for this page (no SumUp merchant and key on the page or "
        "the site default)"
    )


async def merchant_account(session: AsyncSession, page_config_id: int) -> MerchantAccount:
    table = page_payment_configs
    async with remote_read(session, "blog", isolate=False):
        row = (await session.execute(select(table).where(table.c.id == page_config_id))).first()
    if row is None or not row.sumup_api_key:
        raise Conflict(f"page config {page_config_id} has no SumUp key any more")
    return MerchantAccount(row.sumup_merchant_code, row.sumup_api_key)


# -- create ------------------------------------------------------------------------------------
async def create_order(
    session: AsyncSession, request: CreateOrder, gateway: SumUpGateway, urls: OrderUrls
) -> CreatedOrder:
    """Insert the order (pending), its items and its first payment attempt, and create the SumUp
    hosted checkout, all in the caller's transaction: if SumUp fails, nothing is left behind."""
    currency = validate_order(request)
    _check_urls(request, urls)
    containers = {
        line.market_place_container_id
        for line in request.cart_items
        if line.market_place_container_id is not None
    } | {
        line.container_id
        for line in (*request.calendar_entries, *request.tickets)
        if line.container_id is not None
    }
    config = await resolve_payment_config(session, request.page_post_id, containers)
    total = _money(request.product_total + request.calendar_total + request.ticket_total)
    if total <= 0:
        raise InvalidInput("the order total must be more than zero", field="product_total")

    order = Order(
        user_id=request.user_id,
        session_id=request.session_id,
        page_post_id=request.page_post_id,
        currency=currency,
        product_total=_money(request.product_total),
        calendar_total=_money(request.calendar_total),
        ticket_total=_money(request.ticket_total),
        total=total,
        description="rose-ash order",
        page_config_id=config.id,
        merchant_code=config.account.merchant_code,
        checkout_prefix=config.checkout_prefix,
    )
    session.add(order)
    await session.flush()
    order.description = f"rose-ash order #{order.id}"
    session.add_all(
        [
            *(
                OrderItem(
                    order_id=order.id,
                    kind="product",
                    source_id=line.product_id,
                    title=line.product_title,
                    slug=line.product_slug,
                    image=line.product_image,
                    unit_price=_money(line.unit_price),
                    currency=line.product_price_currency,
                    quantity=line.quantity,
                    market_place_container_id=line.market_place_container_id,
                )
                for line in request.cart_items
            ),
            *(
                OrderItem(
                    order_id=order.id,
                    kind=kind,
                    source_id=line.id,
                    title=line.title,
                    unit_price=_money(line.price),
                    currency=line.currency,
                    quantity=1,
                    market_place_container_id=line.container_id,
                )
                for kind, lines in (
                    ("calendar_entry", request.calendar_entries),
                    ("ticket", request.tickets),
                )
                for line in lines
            ),
        ]
    )
    attempt = await _new_attempt(session, order, 1, gateway, config.account, urls)
    return CreatedOrder(
        order_id=order.id,
        sumup_hosted_url=attempt.hosted_url or "",
        page_config_id=config.id,
        sumup_reference=attempt.checkout_reference,
        description=order.description,
    )


async def _new_attempt(
    session: AsyncSession,
    order: Order,
    number: int,
    gateway: SumUpGateway,
    account: MerchantAccount,
    urls: OrderUrls,
) -> PaymentAttempt:
    reference = checkout_reference(order.checkout_prefix, order.id, number)
    remote = await gateway.create_checkout(
        account,
        reference=reference,
        amount=order.total,
        currency=order.currency,
        description=order.description,
        webhook_url=urls.webhook(order.id),
        redirect_url=urls.return_page(order.id),
    )
    if not remote.hosted_url:
        raise PaymentProviderError("the checkout has no hosted checkout URL")
    if _money(remote.amount) != order.total or remote.currency != order.currency:
        # A checkout recovered by reference (409) must be ours: same amount, same currency.
        raise PaymentProviderError(
            f"SumUp already holds {reference} for {remote.amount} {remote.currency}, "
            f"not {order.total} {order.currency}"
        )
    attempt = PaymentAttempt(
        order_id=order.id,
        number=number,
        checkout_reference=reference,
        sumup_checkout_id=remote.id,
        hosted_url=remote.hosted_url,
        status="PENDING",
        amount=order.total,
        currency=order.currency,
    )
    session.add(attempt)
    await session.flush()
    return attempt


# -- applying what SumUp reports ---------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """What applying a report did: ``paid`` is True only for the one call that made the
    ``pending -> paid`` transition."""

    order_status: str
    attempt_status: str
    paid: bool = False
    flagged: bool = False


async def apply_checkout(
    session: AsyncSession, order: Order, attempt: PaymentAttempt, remote: RemoteCheckout
) -> Applied:
    if remote.id != attempt.sumup_checkout_id:
        raise ValueError("the checkout does not belong to this attempt")
    if _money(remote.amount) != _money(attempt.amount) or remote.currency != attempt.currency:
        reason = (
            f"SumUp reports {remote.amount} {remote.currency} for checkout {remote.id}, "
            f"the order is {attempt.amount} {attempt.currency}"
        )
        flagged = await session.scalar(
            update(Order)
            .where(Order.id == order.id, Order.flagged.is_(False))
            .values(flagged=True, flag_reason=reason, updated_at=func.now())
            .returning(Order.id)
        )
        if flagged is not None:
            logger.warning("order %s flagged: %s", order.id, reason)
        return Applied(order.status, attempt.status, flagged=True)

    # A paid or expired attempt never changes again; FAILED may still become PAID.
    await session.execute(
        update(PaymentAttempt)
        .where(
            PaymentAttempt.id == attempt.id,
            PaymentAttempt.status.in_(("PENDING", "FAILED")),
            PaymentAttempt.status != remote.status,
        )
        .values(
            status=remote.status,
            transaction_code=remote.transaction_code,
            updated_at=func.now(),
        )
    )
    paid = False
    if remote.status == "PAID":
        transitioned = await session.scalar(
            update(Order)
            .where(Order.id == order.id, Order.status == "pending", Order.flagged.is_(False))
            .values(status="paid", paid_at=func.now(), updated_at=func.now())
            .returning(Order.id)
        )
        if transitioned is not None:
            paid = True
            await _enqueue_after_payment(session, order)
        else:
            # Paid (or flagged) by someone else meanwhile: report what the database says.
            current = (
                await session.execute(
                    select(Order.status, Order.flagged).where(Order.id == order.id)
                )
            ).one()
            return Applied(current.status, attempt.status, flagged=current.flagged)
    # ORM-enabled UPDATEs keep the in-session order and attempt in step with the database.
    return Applied(order.status, attempt.status, paid=paid, flagged=order.flagged)


async def _enqueue_after_payment(session: AsyncSession, order: Order) -> None:
    """The effects of a payment elsewhere, in the transaction of the transition."""
    items = list(await session.scalars(select(OrderItem).where(OrderItem.order_id == order.id)))
    await enqueue(
        session,
        outbox,
        service="cart",
        action="clear-cart-for-order",
        payload={
            "order_id": order.id,
            "user_id": order.user_id,
            "session_id": order.session_id,
            "page_post_id": order.page_post_id,
            "product_ids": sorted({item.source_id for item in items if item.kind == "product"}),
        },
        idempotency_key=f"orders:{order.id}:clear-cart",
    )
    entry_ids = sorted(item.source_id for item in items if item.kind == "calendar_entry")
    ticket_ids = sorted(item.source_id for item in items if item.kind == "ticket")
    if entry_ids or ticket_ids:
        await enqueue(
            session,
            outbox,
            service="events",
            action="confirm-for-order",
            payload={"order_id": order.id, "entry_ids": entry_ids, "ticket_ids": ticket_ids},
            idempotency_key=f"orders:{order.id}:confirm-bookings",
        )


async def attempt_for_checkout(
    session: AsyncSession, order_id: int, checkout_id: str
) -> tuple[Order, PaymentAttempt] | None:
    found = (
        await session.execute(
            select(Order, PaymentAttempt)
            .join(PaymentAttempt, PaymentAttempt.order_id == Order.id)
            .where(Order.id == order_id, PaymentAttempt.sumup_checkout_id == checkout_id)
        )
    ).first()
    return None if found is None else (found.Order, found.PaymentAttempt)


async def handle_webhook(
    session: AsyncSession, order_id: int, checkout_id: str, gateway: SumUpGateway
) -> Applied | None:
    """A webhook names a checkout and nothing else; it is unsigned. Unknown checkouts are
    ignored without calling SumUp; known ones are re-fetched and applied."""
    found = await attempt_for_checkout(session, order_id, checkout_id)
    if found is None:
        return None
    order, attempt = found
    return await refresh_attempt(session, order, attempt, gateway)


async def refresh_attempt(
    session: AsyncSession, order: Order, attempt: PaymentAttempt, gateway: SumUpGateway
) -> Applied:
    account = await merchant_account(session, order.page_config_id)
    try:
        remote = await gateway.get_checkout(account, attempt.sumup_checkout_id)
    except CheckoutNotFound:
        logger.warning("checkout %s of order %s is unknown to SumUp", attempt.id, order.id)
        return Applied(order.status, attempt.status)
    return await apply_checkout(session, order, attempt, remote)


async def recheck(session: AsyncSession, order: Order, gateway: SumUpGateway) -> Applied | None:
    """Re-fetch the current attempt of a pending order (return page, recheck button)."""
    attempt = order.current_attempt
    if attempt is None or order.status != "pending":
        return None
    return await refresh_attempt(session, order, attempt, gateway)


async def start_new_attempt(
    session: AsyncSession, order: Order, gateway: SumUpGateway, urls: OrderUrls
) -> PaymentAttempt | None:
    """Pay again: first make sure the current attempt is not paid (and close it at SumUp so it
    cannot be paid as well), then create a new checkout with a new reference. None when the
    order turned out to be settled meanwhile: the caller commits that finding and says so."""
    # One new attempt at a time per order; the lock also shows a payment that landed meanwhile.
    locked = (
        await session.execute(
            select(Order.status, Order.flagged).where(Order.id == order.id).with_for_update()
        )
    ).one()
    if locked.status != "pending":
        raise Conflict(f"order {order.id} is {locked.status}; it cannot be paid again")
    if locked.flagged:
        raise Conflict(f"order {order.id} is under review; it cannot be paid again now")
    current = order.current_attempt
    account = await merchant_account(session, order.page_config_id)
    if current is not None and current.status in ("PENDING", "FAILED"):
        applied = await refresh_attempt(session, order, current, gateway)
        if applied.order_status != "pending" or applied.flagged:
            return None
        if current.status in ("PENDING", "FAILED"):
            try:
                remote = await gateway.deactivate_checkout(account, current.sumup_checkout_id)
            except CheckoutNotFound:
                remote = None
            if remote is not None:
                applied = await apply_checkout(session, order, current, remote)
                if applied.order_status != "pending" or applied.flagged:
                    return None
    number = (current.number + 1) if current is not None else 1
    attempt = await _new_attempt(session, order, number, gateway, account, urls)
    order.attempts.append(attempt)
    return attempt


# -- reading -----------------------------------------------------------------------------------
def owned_by(order: Order, user_id: int | None, session_id: str) -> bool:
    if order.user_id is not None:
        return order.user_id == user_id
    return order.session_id == session_id


# What a page or an answer about orders shows: the lines and the payment attempts.
WITH_DETAILS = (selectinload(Order.items), selectinload(Order.attempts))


async def load_order(session: AsyncSession, order_id: int) -> Order | None:
    return await session.scalar(select(Order).options(*WITH_DETAILS).where(Order.id == order_id))


async def get_owned_order(
    session: AsyncSession, order_id: int, user_id: int | None, session_id: str
) -> Order:
    """The order if it belongs to this identity; another's order is indistinguishable from a
    missing one (404)."""
    order = await load_order(session, order_id)
    if order is None or not owned_by(order, user_id, session_id):
        raise NotFound(f"Order {order_id} does not exist")
    return order


async def list_orders(
    session: AsyncSession, user_id: int | None, session_id: str, page: int
) -> tuple[list[Order], int]:
    owner = (
        Order.user_id == user_id
        if user_id is not None
        else (Order.session_id == session_id) & Order.user_id.is_(None)
    )
    total = await session.scalar(select(func.count()).select_from(Order).where(owner)) or 0
    orders = list(
        await session.scalars(
            select(Order)
            .options(*WITH_DETAILS)
            .where(owner)
            .order_by(Order.id.desc())
            .limit(ORDERS_PER_PAGE)
            .offset((page - 1) * ORDERS_PER_PAGE)
        )
    )
    return orders, total


def order_dict(order: Order) -> dict[str, Any]:
    attempt = order.current_attempt
    return {
        "id": order.id,
        "status": order.status,
        "flagged": order.flagged,
        "currency": order.currency,
        "product_total": str(order.product_total),
        "calendar_total": str(order.calendar_total),
        "ticket_total": str(order.ticket_total),
        "total": str(order.total),
        "description": order.description,
        "page_post_id": order.page_post_id,
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "payment": None
        if attempt is None
        else {
            "attempt": attempt.number,
            "status": attempt.status,
            "reference": attempt.checkout_reference,
        },
        "items": [
            {
                "kind": item.kind,
                "source_id": item.source_id,
                "title": item.title,
                "slug": item.slug,
                "unit_price": str(item.unit_price),
                "quantity": item.quantity,
                "line_total": str(item.line_total),
                "currency": item.currency,
            }
            for item in order.items
        ],
    }


# A checkout that has not settled in this long never will: it is no longer asked about.
RECONCILE_WINDOW = timedelta(days=14)


async def pending_orders_to_reconcile(session: AsyncSession, limit: int = 200) -> list[int]:
    """Pending orders whose current attempt may still change at SumUp (PENDING, or FAILED and
    retried on the hosted page), least recently checked first."""
    later = aliased(PaymentAttempt)
    rows = await session.scalars(
        select(Order.id)
        .join(PaymentAttempt, PaymentAttempt.order_id == Order.id)
        .where(
            Order.status == "pending",
            Order.flagged.is_(False),
            PaymentAttempt.status.in_(("PENDING", "FAILED")),
            PaymentAttempt.created_at > func.now() - RECONCILE_WINDOW,
            ~exists().where(later.order_id == Order.id, later.number > PaymentAttempt.number),
        )
        .order_by(PaymentAttempt.checked_at.asc().nulls_first(), Order.id)
        .limit(limit)
    )
    return list(rows)


async def reconcile_pending(
    maker: async_sessionmaker[AsyncSession], gateway: SumUpGateway
) -> list[int]:
    """Re-fetch every pending order's current checkout from SumUp (webhooks can be lost for
    good). Each order in its own transaction; returns the ids that became paid."""
    async with maker() as session:
        order_ids = await pending_orders_to_reconcile(session)
    paid: list[int] = []
    for order_id in order_ids:
        async with maker() as session:
            try:
                order = await load_order(session, order_id)
                if order is None or order.current_attempt is None:
                    continue
                await session.execute(
                    update(PaymentAttempt)
                    .where(PaymentAttempt.id == order.current_attempt.id)
                    .values(checked_at=func.now())
                )
                applied = await recheck(session, order, gateway)
                await session.commit()
            except Exception:  # one order's trouble must not stop the others
                logger.exception("reconciling order %s failed", order_id)
                continue
            if applied is not None and applied.paid:
                paid.append(order_id)
    if order_ids:
        logger.info("reconciled %d pending order(s); %d paid", len(order_ids), len(paid))
    return paid
