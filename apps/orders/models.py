"""Tables of the orders service (schema ``orders`` in ``db_orders``).

An order snapshots what was bought (titles, prices, quantities) when it is created and never
reads them again from market or events. Each payment attempt is one SumUp checkout with its own
reference; status changes are conditional updates, so a replayed webhook is harmless.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from apps.common.db import IdentityPkMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.outbox import outbox_table

metadata = service_metadata("orders")


class Base(DeclarativeBase):
    metadata = metadata


class Order(IdentityPkMixin, Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'paid', 'cancelled')", name="status_known"),
        CheckConstraint("user_id IS NOT NULL OR session_id IS NOT NULL", name="has_owner"),
        Index("ix_orders_user", "user_id", "id"),
        Index("ix_orders_session", "session_id", "id"),
        Index("ix_orders_pending", "id", postgresql_where=text("status = 'pending'")),
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
    page_config_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    merchant_code: Mapped[str] = mapped_column(String(32), nullable=False)
    checkout_prefix: Mapped[str] = mapped_column(String(40), nullable=False)
    # Set when SumUp reports something that does not match the order (another amount): the
    # order is not marked paid and a person has to look at it.
    flagged: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    flag_reason: Mapped[str | None] = mapped_column(Text)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
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

    @property
    def current_attempt(self) -> PaymentAttempt | None:
        return self.attempts[-1] if self.attempts else None


class OrderItem(IdentityPkMixin, Base):
    __tablename__ = "order_items"
    __table_args__ = (
        CheckConstraint("kind IN ('product', 'calendar_entry', 'ticket')", name="kind_known"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price >= 0", name="unit_price_not_negative"),
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

    order: Mapped[Order] = relationship(back_populates="items", lazy="raise")

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class PaymentAttempt(IdentityPkMixin, Base):
    """One SumUp hosted checkout for an order; a new attempt gets a new reference."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        UniqueConstraint("order_id", "number"),
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
    # When SumUp was last asked about this attempt (reconciliation works least recent first).
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    order: Mapped[Order] = relationship(back_populates="attempts", lazy="raise")


outbox = outbox_table(metadata)
idempotency_keys = idempotency_table(metadata)


# -- foreign tables (not managed by migrations): blog's export views, read through FDW -------
blog_views = MetaData(schema="blog")

# blog.page_payment_configs in db_orders: only the orders edge may read the SumUp API key.
page_payment_configs = Table(
    "page_payment_configs",
    blog_views,
    Column("id", BigInteger, primary_key=True),
    Column("container_type", String(32)),
    Column("container_id", BigInteger),
    Column("sumup_merchant_code", String(32)),
    Column("sumup_api_key", Text),
    Column("sumup_checkout_prefix", String(40)),
)
