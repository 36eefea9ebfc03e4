"""Tables of the relations service (schema ``relations`` in ``db_relations``)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.nonces import nonce_table

metadata = service_metadata("relations")


class Base(DeclarativeBase):
    metadata = metadata


class ContainerRelation(IdentityPkMixin, TimestampedMixin, Base):
    """A child (market place, calendar, ...) attached to a parent (page). Detaching soft-deletes;
    attaching again restores the row, so there is at most one active row per parent/child pair."""

    __tablename__ = "container_relations"
    __table_args__ = (
        Index(
            "uq_container_relations_active_pair",
            "parent_type",
            "parent_id",
            "child_type",
            "child_id",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "ix_container_relations_children",
            "parent_type",
            "parent_id",
            "sort_order",
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_container_relations_child", "child_type", "child_id"),
    )

    parent_type: Mapped[str] = mapped_column(String(32), nullable=False)
    parent_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    child_type: Mapped[str] = mapped_column(String(32), nullable=False)
    child_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sort_order: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)


idempotency_keys = idempotency_table(metadata)
request_nonces = nonce_table(metadata)
