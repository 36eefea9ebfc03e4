"""orders, order_items, payment_attempts, outbox, idempotency keys

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import create_idempotency_keys, create_outbox

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=None if nullable else sa.func.now(),
        nullable=nullable,
    )


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("page_post_id", sa.BigInteger, nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("product_total", sa.Numeric(12, 2), nullable=False),
        sa.Column("calendar_total", sa.Numeric(12, 2), nullable=False),
        sa.Column("ticket_total", sa.Numeric(12, 2), nullable=False),
        sa.Column("total", sa.Numeric(12, 2), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        # Which page config paid for it, and its merchant at the time (a snapshot).
        sa.Column("page_config_id", sa.BigInteger, nullable=False),
        sa.Column("merchant_code", sa.String(32), nullable=False),
        sa.Column("checkout_prefix", sa.String(40), nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("flag_reason", sa.Text, nullable=True),
        _timestamp("paid_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'cancelled')", name="ck_orders_status_known"
        ),
        sa.CheckConstraint(
            "user_id IS NOT NULL OR session_id IS NOT NULL", name="ck_orders_has_owner"
        ),
        sa.CheckConstraint(
            "total = product_total + calendar_total + ticket_total", name="ck_orders_total_sum"
        ),
        schema="orders",
    )
    # A user's orders, newest first (the order list), and an anonymous session's.
    op.create_index("ix_orders_user", "orders", ["user_id", "id"], schema="orders")
    op.create_index("ix_orders_session", "orders", ["session_id", "id"], schema="orders")
    # Reconciliation scans pending orders only.
    op.create_index(
        "ix_orders_pending",
        "orders",
        ["id"],
        schema="orders",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "order_items",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "order_id",
            sa.BigInteger,
            sa.ForeignKey("orders.orders.id", ondelete="CASCADE", name="fk_order_items_order_id"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_id", sa.BigInteger, nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("slug", sa.String(255), nullable=True),
        sa.Column("image", sa.String(512), nullable=True),
        sa.Column("unit_price", sa.Numeric(10, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("market_place_container_id", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "kind IN ('product', 'calendar_entry', 'ticket')", name="ck_order_items_kind_known"
        ),
        sa.CheckConstraint("quantity > 0", name="ck_order_items_quantity_positive"),
        sa.CheckConstraint("unit_price >= 0", name="ck_order_items_unit_price_not_negative"),
        schema="orders",
    )
    op.create_index("ix_order_items_order_id", "order_items", ["order_id"], schema="orders")
    op.create_table(
        "payment_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "order_id",
            sa.BigInteger,
            sa.ForeignKey(
                "orders.orders.id", ondelete="CASCADE", name="fk_payment_attempts_order_id"
            ),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        # One reference per attempt: SumUp refuses a second checkout with the same one (409).
        sa.Column("checkout_reference", sa.String(64), nullable=False, unique=True),
        # The webhook names the checkout; this is how it finds its order.
        sa.Column("sumup_checkout_id", sa.String(64), nullable=False, unique=True),
        sa.Column("hosted_url", sa.String(1024), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("transaction_code", sa.String(64), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("order_id", "number", name="uq_payment_attempts_order_id_number"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PAID', 'FAILED', 'EXPIRED')",
            name="ck_payment_attempts_status_known",
        ),
        schema="orders",
    )
    create_outbox("orders")
    create_idempotency_keys("orders")


def downgrade() -> None:
    for table in ("idempotency_keys", "outbox", "payment_attempts", "order_items", "orders"):
        op.drop_table(table, schema="orders")
