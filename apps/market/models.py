"""Tables of the market service (schema ``market`` in ``db_market``)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.blog import contract as blog
from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.outbox import outbox_table
from apps.likes import contract as likes

metadata = service_metadata("market")


class Base(DeclarativeBase):
    metadata = metadata


class MarketPlace(IdentityPkMixin, TimestampedMixin, Base):
    """A market place sells through one page (its container); relations records the attachment
    so other services can list a page's markets."""

    __tablename__ = "market_places"

    slug: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    container_type: Mapped[str] = mapped_column(String(32), nullable=False)
    container_id: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Product(IdentityPkMixin, TimestampedMixin, Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("regular_price >= 0", name="regular_price_not_negative"),
        CheckConstraint("special_price IS NULL OR special_price >= 0", name="special_price_ok"),
    )

    slug: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    regular_price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    special_price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2), nullable=True)
    price_currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="EUR")
    market_place_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("market.market_places.id"), nullable=False, index=True
    )


# The undos relations could not be given when due (apps.relations.contract.RelationsLink).
outbox = outbox_table(metadata)

# -- foreign tables: other services' export views, as their contracts declare them ------------
foreign_likes = likes.LIKES.foreign_table()
foreign_pages = blog.PAGES.foreign_table(["id", "slug", "title"])
