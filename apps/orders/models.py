"""Tables of the orders service (schema ``orders`` in ``db_orders``).

An order snapshots what was bought (titles, prices, quantities) when it is created and never
reads them again from market or events. Each payment attempt is one SumUp checkout with its own
reference; status changes are conditional updates, so a replayed webhook is harmless.

What an order claims (its cart lines and bookings) is kept in ``order_claims``: a newer order
of the same buyer that shares a claim supersedes the older one, and a claim already paid for
cannot be ordered again. Money that must go back is a row in ``refunds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from apps.blog import contract as blog
from apps.common.admission import admission_table
from apps.common.adoption import adopted_sessions_table
from apps.common.db import IdentityPkMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.nonces import nonce_table
from apps.common.outbox import outbox_table

metadata = service_metadata("orders")


class Base(DeclarativeBase):
    metadata = metadata


# pending: payable. paid: money taken and kept. superseded: a newer order of the same buyer
# took over its goods. expired: its payable time passed. cancelled: from the monolith.
# refund_due / refunded: money arrived for an order that could not be honoured.
ORDER_STATES = (
    "pending",
    "paid",
    "superseded",
    "expired",
    "cancelled",
    "refund_due",
    "refunded",
)
# An order in one of these states will not be paid: a payment that still arrives is refunded.
CLOSED_UNPAID_STATES = ("superseded", "expired", "cancelled")
# The amount columns are numeric(12, 2): the most an order, a line or a payment can be.
MAX_AMOUNT = Decimal("9999999999.99")
CLAIM_KINDS = ("cart_line", "calendar_entry", "ticket")
# What an order item is: its goods.
ITEM_KINDS = ("product", "calendar_entry", "ticket")
REFUND_STATES = ("due", "requested", "done", "failed")
# An order a person must look at (besides one with a refund not done): its partial index
# (orders 0007) and the query that uses it say it in the same words, so that PostgreSQL can
# prove the one implies the other.
NEEDS_A_PERSON = "flagged IS TRUE OR status = 'refund_due'"


class Order(IdentityPkMixin, Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(f"status IN {ORDER_STATES!r}", name="status_known"),
        CheckConstraint("user_id IS NOT NULL OR session_id IS NOT NULL", name="has_owner"),
        # An order that can be paid has a time after which it cannot (orders 0006).
        CheckConstraint(
            "status <> 'pending' OR payable_until IS NOT NULL", name="pending_has_deadline"
        ),
        # Where its money is paid (orders 0011): an order with nothing to pay (every line free,
        # paid as it is made, without SumUp) may name no merchant; any other must.
        CheckConstraint(
            "total = 0 OR (page_config_id IS NOT NULL AND merchant_code IS NOT NULL "
            "AND checkout_prefix IS NOT NULL)",
            name="free_or_has_merchant",
        ),
        Index("ix_orders_user", "user_id", "id"),
        Index("ix_orders_session", "session_id", "id"),
        Index("ix_orders_pending", "id", postgresql_where=text("status = 'pending'")),
        Index("ix_orders_attention", "id", postgresql_where=text(NEEDS_A_PERSON)),
    )

    user_id: Mapped[int | None] = mapped_column(BigInteger)
    session_id: Mapped[str | None] = mapped_column(String(64))
    page_post_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    product_total: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    calendar_total: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    ticket_total: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    description: Mapped[str] = mapped_column(String(255), nullable=False)
    # The page config (its SumUp merchant) the order is paid through, snapshotted when it is
    # made; None only for an order with nothing to pay (free_or_has_merchant).
    page_config_id: Mapped[int | None] = mapped_column(BigInteger)
    merchant_code: Mapped[str | None] = mapped_column(String(32))
    checkout_prefix: Mapped[str | None] = mapped_column(String(40))
    # Set when SumUp reports something that does not match the order (another amount): the
    # order is not marked paid and a person has to look at it.
    flagged: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    flag_reason: Mapped[str | None] = mapped_column(Text)
    # Whether the person's review (end-review) changed its status: it ended the order. None for
    # one never reviewed, or reviewed before orders 0019.
    review_ended_it: Mapped[bool | None] = mapped_column(Boolean)
    # The newer order of the same buyer that took over this one's goods.
    superseded_by: Mapped[int | None] = mapped_column(BigInteger)
    # Until when it can be paid (its SumUp checkouts' valid_until, its bookings' holds); None
    # for orders made before orders expired (they are reconciled for RECONCILE_WINDOW).
    payable_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The attempt whose payment made it paid, recorded then and never changed (orders 0015: a
    # foreign key, with ``id``, to one of its own attempts, made there and not declared here: a
    # second path between the two tables would make ``attempts`` ambiguous). None for an order
    # never paid, one paid with nothing to pay, and one the release before 0015 paid (see
    # apps.orders.settlement.paid_attempt_id).
    paid_attempt_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    # Loaded explicitly where a page needs them (service.load_order); never behind our back.
    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order", order_by="OrderItem.id", lazy="raise"
    )
    attempts: Mapped[list[PaymentAttempt]] = relationship(
        back_populates="order", order_by="PaymentAttempt.number", lazy="raise"
    )
    refunds: Mapped[list[Refund]] = relationship(order_by="Refund.id", lazy="raise")

    @property
    def current_attempt(self) -> PaymentAttempt | None:
        return self.attempts[-1] if self.attempts else None


class OrderItem(IdentityPkMixin, Base):
    __tablename__ = "order_items"
    __table_args__ = (
        CheckConstraint(f"kind IN {ITEM_KINDS!r}", name="kind_known"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price >= 0", name="unit_price_not_negative"),
        CheckConstraint(
            "unconfirmed_at IS NULL OR kind IN ('calendar_entry', 'ticket')",
            name="unconfirmed_is_a_booking",
        ),
    )

    order_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("orders.orders.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # The product, calendar entry or ticket id in its own service.
    source_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    slug: Mapped[str | None] = mapped_column(String(255))
    image: Mapped[str | None] = mapped_column(String(512))
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    market_place_container_id: Mapped[int | None] = mapped_column(BigInteger)
    # The cart lines a product line stands for (the live line, then lines merged into it at
    # sign-in): what clear-cart-for-order removes once the order is paid.
    cart_line_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    # When events said it could not confirm this booking for the order (the buyer removed it
    # from the cart the moment before): settlement.bookings_not_confirmed. None for a booking
    # confirmed (or not yet answered), for goods, and for lines older than orders 0012 whose
    # fate it could not tell.
    unconfirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    order: Mapped[Order] = relationship(back_populates="items", lazy="raise")

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class PaymentAttempt(IdentityPkMixin, Base):
    """One SumUp hosted checkout for an order; a new attempt gets a new reference."""

    __tablename__ = "payment_attempts"
    # Open attempts (PENDING, FAILED) are indexed by ix_payment_attempts_open_checked (orders
    # 0002, partial on that status, not declared here): reconciliation's scan and the attention
    # list's search for orders waiting on SumUp read only them.
    __table_args__ = (
        UniqueConstraint("order_id", "number"),
        # What orders.paid_attempt_id's foreign key names (orders 0015): an attempt of the order.
        UniqueConstraint("id", "order_id", name="uq_payment_attempts_id_order_id"),
        CheckConstraint("status IN ('PENDING', 'PAID', 'FAILED', 'EXPIRED')", name="status_known"),
    )

    order_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("orders.orders.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    checkout_reference: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    sumup_checkout_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hosted_url: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="PENDING")
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    transaction_code: Mapped[str | None] = mapped_column(String(64))
    # SumUp's id of the successful transaction: what a refund names.
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    # When SumUp was last asked about this attempt (reconciliation works least recent first).
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    order: Mapped[Order] = relationship(back_populates="attempts", lazy="raise")


class OrderClaim(Base):
    """One cart line or booking an order asks to be paid for (``ref_id`` is its id in cart or
    events)."""

    __tablename__ = "order_claims"
    __table_args__ = (CheckConstraint(f"kind IN {CLAIM_KINDS!r}", name="kind_known"),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    ref_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("orders.orders.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    )


class Refund(IdentityPkMixin, Base):
    """Money that must go back to the buyer, once per order and reason. ``due`` until orders
    asks SumUp (``requested``, recorded before the call), ``done`` once SumUp confirms, or
    ``failed`` when SumUp refuses and a person has to act."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("order_id", "reason_key"),
        CheckConstraint(f"status IN {REFUND_STATES!r}", name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_refunds_open", "id", postgresql_where=text("status IN ('due', 'requested')")),
    )

    order_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("orders.orders.id", ondelete="CASCADE"), nullable=False
    )
    attempt_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("orders.payment_attempts.id", ondelete="CASCADE"), nullable=False
    )
    reason_key: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="due")
    tries: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # What SumUp had refunded of the payment, read right before this refund was last asked
    # (orders 0016): a request whose answer was lost counts only what SumUp refunded since.
    # None when SumUp would not show it, or for a request made before 0016.
    sumup_refunded_before: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    last_error: Mapped[str | None] = mapped_column(Text)
    refunded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class ReconciliationPass(IdentityPkMixin, Base):
    """One reconciliation pass, by whichever orders process took its turn: a pass starts only
    under the pass lock and only when the last one started at least the reconciliation interval
    ago, so with any number of processes there is one pass per interval (and this table shows
    it). Its ``finished_at`` is what ``rose_orders_reconciliation_lag_seconds`` measures from."""

    __tablename__ = "reconciliation_passes"

    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # host:pid of the process that ran it.
    process: Mapped[str] = mapped_column(String(100), nullable=False)
    checked: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    paid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


outbox = outbox_table(metadata)
idempotency_keys = idempotency_table(metadata)
request_nonces = nonce_table(metadata)
# The last minute's new payment attempts per client network (apps.orders.service.PAY_AGAIN).
pay_again_starts = admission_table(metadata, "pay_again_starts")
# Anonymous sessions sign-in adopted (apps.common.adoption): an order still for one is refused.
adopted_sessions = adopted_sessions_table(metadata)


# -- foreign tables (not managed by migrations): blog's export views, read through FDW --------
# blog.page_payment_configs in db_orders: only the orders edge may read the SumUp API key.
page_payment_configs = blog.PAGE_PAYMENT_CONFIGS.foreign_table()
# blog.retired_sumup_keys in db_orders: a config's old merchant's key, for that merchant's
# orders (late payments, refunds); only the orders edge may read it.
retired_sumup_keys = blog.RETIRED_SUMUP_KEYS.foreign_table()


@dataclass(frozen=True)
class OrderLine:
    """A line of an order's pages: its items of one kind, title and price, with their quantity.
    Orders keeps each ticket as an item (events confirms and refunds them one by one); the
    buyer chose, and the cart showed, "2 x adult" as one line."""

    kind: str
    title: str
    unit_price: Decimal
    quantity: int

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity

    @property
    def named(self) -> str:
        return self.title if self.quantity == 1 else f"{self.quantity} \u00d7 {self.title}"


def order_lines(items: Iterable[OrderItem]) -> list[OrderLine]:
    """``items`` as the buyer's lines, in the order's order: tickets of one title and price are
    one line (of one entry and type, as the cart showed them); a product or a calendar entry is
    a line of its own, whatever it shares with another. What was ordered, whether or not
    events could confirm it: the pages name the bookings it could not in a sentence of their
    own."""
    lines: dict[tuple[str, str, Decimal, int | None], OrderLine] = {}
    for item in items:
        key = (
            item.kind,
            item.title,
            item.unit_price,
            None if item.kind == "ticket" else item.source_id,
        )
        line = lines.get(key)
        quantity = item.quantity + (line.quantity if line is not None else 0)
        lines[key] = OrderLine(item.kind, item.title, item.unit_price, quantity)
    return list(lines.values())
