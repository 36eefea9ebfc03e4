"""Tables of the likes service (schema ``likes`` in ``db_likes``): one table for every kind of
target, replacing the monolith's product_likes and post_likes."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Index, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.nonces import nonce_table

metadata = service_metadata("likes")

TARGET_TYPES = ("product", "post")


class Base(DeclarativeBase):
    metadata = metadata


class Like(IdentityPkMixin, TimestampedMixin, Base):
    """A user's like of a target: a product (by slug) or a post (by id). Unliking soft-deletes
    the row and liking again restores it, so each (user, target) has exactly one row."""

    __tablename__ = "likes"
    __table_args__ = (
        UniqueConstraint("user_id", "target_type", "target_slug"),
        UniqueConstraint("user_id", "target_type", "target_id"),
        Index("ix_likes_target", "target_type", "target_slug"),
        # "This user's likes of this type": the remote scan behind market's ?liked=true.
        Index(
            "ix_likes_user_active",
            "user_id",
            "target_type",
            postgresql_include=["target_slug", "target_id"],
            postgresql_where=text("deleted_at IS NULL"),
        ),
        CheckConstraint(
            "(target_type = 'product' AND target_slug IS NOT NULL AND target_id IS NULL)"
            " OR (target_type = 'post' AND target_id IS NOT NULL AND target_slug IS NULL)",
            name="target_matches_type",
        ),
    )

    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_type: Mapped[str] = mapped_column(String(32), nullable=False)
    target_slug: Mapped[str | None] = mapped_column(String(255), nullable=True)
    target_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


idempotency_keys = idempotency_table(metadata)
request_nonces = nonce_table(metadata)
