"""The cart's one table (schema ``cart`` in ``db_cart``), and the foreign tables it reads.

After the split, cart owns cart lines and nothing else: products come from market, bookings
from events and page configs from blog, all through read-only postgres_fdw foreign tables
(declared here in their own MetaData, never managed by cart's migrations).
"""

from __future__ import annotations

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
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata

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


# -- foreign tables: other services' export views ---------------------------------------------
market_views = MetaData(schema="market")
products = Table(
    "products",
    market_views,
    Column("id", BigInteger, primary_key=True),
    Column("slug", String(255)),
    Column("title", String(255)),
    Column("image", String(512)),
    Column("regular_price", Numeric(10, 2)),
    Column("special_price", Numeric(10, 2)),
    Column("price_currency", String(3)),
    Column("market_place_id", BigInteger),
    Column("market_place_slug", String(255)),
    Column("container_type", String(32)),
    Column("container_id", BigInteger),
)

blog_views = MetaData(schema="blog")
page_configs = Table(
    "page_configs",
    blog_views,
    Column("id", BigInteger, primary_key=True),
    Column("container_type", String(32)),
    Column("container_id", BigInteger),
    Column("page_slug", String(255)),
    Column("page_title", String(255)),
    Column("features", JSONB),
    Column("sumup_merchant_code", String(32)),
    Column("sumup_checkout_prefix", String(40)),
    Column("sumup_configured", Boolean),
)

events_views = MetaData(schema="events")
pending_bookings = Table(
    "pending_bookings",
    events_views,
    Column("kind", Text),
    Column("id", BigInteger),
    Column("user_id", BigInteger),
    Column("session_id", String(64)),
    Column("title", Text),
    Column("price", Numeric(10, 2)),
    Column("currency", String(3)),
    Column("calendar_id", BigInteger),
    Column("starts_at", DateTime(timezone=True)),
    Column("container_type", String(32)),
    Column("container_id", BigInteger),
)
