"""The cart's tables (schema ``cart`` in ``db_cart``), and the foreign tables it reads.

After the split, cart owns cart lines (and the ids of the inbox activities it applied, and the
paid orders it cleared):
products come from market, bookings from events and page configs from blog, all through
read-only postgres_fdw foreign tables (declared here in their own MetaData, never managed by
cart's migrations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.blog import contract as blog
from apps.common.adoption import adopted_sessions_table
from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.nonces import nonce_table
from apps.events import contract as events
from apps.market import contract as market

metadata = service_metadata("cart")


class Base(DeclarativeBase):
    metadata = metadata


class CartItem(IdentityPkMixin, TimestampedMixin, Base):
    """A product in someone's cart: a user's, or an anonymous session's until sign-in adopts
    it. Removing soft-deletes; an order that clears the line records its id, which makes
    clear-cart-for-order idempotent per order."""

    __tablename__ = "cart_items"
    __table_args__ = (
        CheckConstraint("user_id IS NOT NULL OR session_id IS NOT NULL", name="has_owner"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index(
            "uq_cart_items_user_product",
            "user_id",
            "product_id",
            unique=True,
            postgresql_where=text("deleted_at IS NULL AND user_id IS NOT NULL"),
        ),
        Index(
            "uq_cart_items_session_product",
            "session_id",
            "product_id",
            unique=True,
            postgresql_where=text("deleted_at IS NULL AND user_id IS NULL"),
        ),
        Index("ix_cart_items_order_id", "order_id"),
        Index(
            "ix_cart_items_merged_into_id",
            "merged_into_id",
            postgresql_where=text("merged_into_id IS NOT NULL"),
        ),
    )

    user_id: Mapped[int | None] = mapped_column(BigInteger)
    session_id: Mapped[str | None] = mapped_column(String(64))
    product_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    # The page the product is sold through (its market place's container).
    market_place_container_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    # Sign-in merged this anonymous line into the user's line of the same product.
    merged_into_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("cart.cart_items.id"))


class InboxActivity(Base):
    """An inbox activity applied, by its id: a second delivery answers what the first did."""

    __tablename__ = "inbox_activities"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    # SHA-256 of the activity as received: the same id with other content is refused.
    activity_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    answer: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class ClearedOrder(Base):
    """A paid order clear-cart-for-order has cleared, and what it answered: a repeat answers the
    same and clears nothing more, even when the first call found nothing to clear."""

    __tablename__ = "cleared_orders"

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    cleared: Mapped[int] = mapped_column(Integer, nullable=False)
    cleared_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class CheckoutStart(Base):
    """A new anonymous cart checked out from a client network in the last minute: what bounds a
    client that starts a new session for every checkout (apps.cart.service.admit_checkout, by
    apps.common.admission).
    A row older than the window is deleted by the next checkout."""

    __tablename__ = "checkout_starts"
    __table_args__ = (Index("ix_checkout_starts_started_at", "started_at"),)

    # The client's address, an IPv6 client's /64.
    network: Mapped[str] = mapped_column(INET, primary_key=True)
    # The checkout's idempotency key: the same cart checked out again is not a new start.
    cart_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


# Anonymous sessions sign-in adopted (apps.common.adoption): an add still carrying one is refused.
adopted_sessions = adopted_sessions_table(metadata)
request_nonces = nonce_table(metadata)


# -- foreign tables: other services' export views, as their contracts declare them ------------
products = market.PRODUCTS.foreign_table()
# Without the timestamps or the SumUp merchant: the cart edge reads only what it shows.
page_configs = blog.PAGE_CONFIGS.foreign_table(
    ["id", "container_type", "container_id", "page_slug", "page_title", "features"]
)
pending_bookings = events.PENDING_BOOKINGS.foreign_table()
ended_holds = events.ENDED_HOLDS.foreign_table()
