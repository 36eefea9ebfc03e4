"""Tables of the blog service (schema ``blog`` in ``db_blog``): posts (pages are posts with
``is_page``) and the page configs that moved here from cart in the split.

Also the foreign table blog reads through postgres_fdw (``relations.container_relations``), in
its own MetaData: migrations never manage foreign tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.nonces import nonce_table
from apps.likes import contract as likes
from apps.market import contract as market
from apps.relations import contract as relations

metadata = service_metadata("blog")

POST_STATUSES = ("draft", "published")
# The container of a page's config is ("page", posts.id); ("site", 0) is the site-wide default
# that serves checkouts whose items span several pages.
PAGE_CONTAINER = "page"
SITE_CONTAINER = "site"
SITE_CONTAINER_ID = 0
CONTAINER_TYPES = (PAGE_CONTAINER, SITE_CONTAINER)


class Base(DeclarativeBase):
    metadata = metadata


class Post(IdentityPkMixin, Base):
    """A blog post, or a page when ``is_page`` is true. Only published ones are public."""

    __tablename__ = "posts"
    __table_args__ = (
        CheckConstraint("status IN ('draft', 'published')", name="status_known"),
        CheckConstraint(
            "status <> 'published' OR published_at IS NOT NULL", name="published_has_date"
        ),
        Index(
            "ix_posts_published",
            "is_page",
            text("published_at DESC"),
            "id",
            postgresql_where=text("status = 'published'"),
        ),
    )

    slug: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    is_page: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="draft")
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class PageConfig(IdentityPkMixin, TimestampedMixin, Base):
    """Features and SumUp merchant of a container (a page, or the site default). Deleting
    soft-deletes; at most one active row per container."""

    __tablename__ = "page_configs"
    __table_args__ = (
        # The arbiter of page-config-ensure's INSERT ... ON CONFLICT.
        Index(
            "uq_page_configs_active_container",
            "container_type",
            "container_id",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        CheckConstraint("jsonb_typeof(features) = 'object'", name="features_is_object"),
    )

    container_type: Mapped[str] = mapped_column(String(32), nullable=False)
    container_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    features: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    sumup_merchant_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Write-only: never returned by an endpoint, never in export.page_configs.
    sumup_api_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sumup_checkout_prefix: Mapped[str | None] = mapped_column(String(40), nullable=True)


class RetiredSumUpKey(Base):
    """A SumUp merchant and key a page config stopped using (its merchant changed or its key
    was removed, or the config was deleted), kept for orders: its orders made for that merchant
    still settle and refund with it. Written only by the trigger of migrations 0004 and 0005 (in
    the transaction that changed the config); dropped when the config names that merchant with
    a key again, and after ``BLOG_RETIRED_SUMUP_KEY_DAYS``. Readable only by orders
    (``export.retired_sumup_keys``)."""

    __tablename__ = "retired_sumup_keys"

    # No foreign key (migration 0005): the entry outlives a removed config, whose orders
    # still settle with it.
    page_config_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sumup_merchant_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    sumup_api_key: Mapped[str] = mapped_column(String(255), nullable=False)
    retired_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class RetiredSumUpKeyDays(Base):
    """One row: the ``BLOG_RETIRED_SUMUP_KEY_DAYS`` blog last started with (migration 0006).
    ``export.retired_sumup_keys`` returns only entries younger than it, so a key past its days
    is not readable even while nobody writes a config."""

    __tablename__ = "retired_sumup_key_days"
    __table_args__ = (
        CheckConstraint("one", name="one_row"),
        CheckConstraint("days BETWEEN 1 AND 3650", name="days"),
    )

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    days: Mapped[int] = mapped_column(Integer, nullable=False)


idempotency_keys = idempotency_table(metadata)
request_nonces = nonce_table(metadata)


# -- foreign tables: other services' export views, as their contracts declare them ------------
# (postgres_fdw; provisioning creates them, migrations never touch them)
foreign_container_relations = relations.CONTAINER_RELATIONS.foreign_table()
foreign_likes = likes.LIKES.foreign_table()
foreign_market_places = market.MARKET_PLACES.foreign_table()
