"""Money invariants: superseded and expired orders, claims, refunds, the paid transaction's id

- ``orders.status`` gains superseded, expired, refund_due and refunded; ``superseded_by`` names
  the newer order; ``payable_until`` bounds when an order can be paid.
- ``order_claims``: the cart lines and bookings each order asks to be paid for.
- ``refunds``: money that must go back, once per order and reason.
- ``payment_attempts.transaction_id``: SumUp's id of the successful transaction.
- ``order_items.cart_line_ids``: the cart lines a product line stands for (what is cleared).

Orders that are pending when this runs get ``payable_until`` = now + 30 minutes (SumUp's
hosted checkout session), so a shop upgraded mid-checkout does not expire its buyers at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_STATES = "('pending', 'paid', 'cancelled')"
NEW_STATES = "('pending', 'paid', 'superseded', 'expired', 'cancelled', 'refund_due', 'refunded')"


def upgrade() -> None:
    # 0001 named it before the naming convention applied (the prefix is doubled); the new
    # constraint takes the name the models give it.
    op.drop_constraint(op.f("ck_orders_ck_orders_status_known"), "orders", schema="orders")
    op.create_check_constraint(
        op.f("ck_orders_status_known"), "orders", f"status IN {NEW_STATES}", schema="orders"
    )
    op.add_column("orders", sa.Column("superseded_by", sa.BigInteger), schema="orders")
    op.add_column("orders", sa.Column("payable_until", sa.DateTime(timezone=True)), schema="orders")
    op.execute(
        "UPDATE orders.orders SET payable_until = now() + interval '30 minutes' "
        "WHERE status = 'pending'"
    )
    op.add_column("payment_attempts", sa.Column("transaction_id", sa.String(64)), schema="orders")
    op.add_column(
        "order_items",
        sa.Column("cart_line_ids", sa.dialects.postgresql.ARRAY(sa.BigInteger)),
        schema="orders",
    )

    op.create_table(
        "order_claims",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref_id", sa.BigInteger, nullable=False),
        sa.Column("order_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("kind", "ref_id", "order_id", name="pk_order_claims"),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.orders.id"],
            name="fk_order_claims_order_id_orders",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "kind IN ('cart_line', 'calendar_entry', 'ticket')",
            name=op.f("ck_order_claims_kind_known"),
        ),
        schema="orders",
    )
    op.create_index("ix_order_claims_order_id", "order_claims", ["order_id"], schema="orders")
    # Orders made before claims existed claim their bookings (their cart lines are unknown).
    op.execute(
        """
        INSERT INTO orders.order_claims (kind, ref_id, order_id)
        SELECT DISTINCT kind, source_id, order_id FROM orders.order_items
        WHERE kind IN ('calendar_entry', 'ticket')
        """
    )

    op.create_table(
        "refunds",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("order_id", sa.BigInteger, nullable=False),
        sa.Column("attempt_id", sa.BigInteger, nullable=False),
        sa.Column("reason_key", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="due"),
        sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("refunded_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_refunds"),
        sa.UniqueConstraint("order_id", "reason_key", name="uq_refunds_order_id_reason_key"),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.orders.id"],
            name="fk_refunds_order_id_orders",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["orders.payment_attempts.id"],
            name="fk_refunds_attempt_id_payment_attempts",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('due', 'requested', 'done', 'failed')", name=op.f("ck_refunds_status_known")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refunds_amount_positive")),
        schema="orders",
    )
    op.create_index(
        "ix_refunds_open",
        "refunds",
        ["id"],
        schema="orders",
        postgresql_where=sa.text("status IN ('due', 'requested')"),
    )
    # Reconciliation also looks at closed orders whose checkout may still be open at SumUp.
    op.create_index(
        "ix_orders_open_or_closing",
        "orders",
        ["id"],
        schema="orders",
        postgresql_where=sa.text("status IN ('pending', 'superseded', 'expired', 'cancelled')"),
    )


def downgrade() -> None:
    # Refusing beats forgetting that money must go back.
    owed = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM orders.refunds WHERE status <> 'done'")
    )
    if owed:
        raise RuntimeError(
            f"cannot downgrade orders below 0003: {owed} refund(s) are not done "
            "(rose orders attention lists them)"
        )
    op.drop_index("ix_orders_open_or_closing", "orders", schema="orders")
    op.drop_table("refunds", schema="orders")
    op.drop_table("order_claims", schema="orders")
    op.drop_column("order_items", "cart_line_ids", schema="orders")
    op.drop_column("payment_attempts", "transaction_id", schema="orders")
    op.drop_column("orders", "payable_until", schema="orders")
    op.drop_column("orders", "superseded_by", schema="orders")
    # Orders in the new states (none owes money any more) have no place in the old set.
    op.execute(
        "UPDATE orders.orders SET status = 'cancelled' "
        "WHERE status NOT IN ('pending', 'paid', 'cancelled')"
    )
    op.drop_constraint(op.f("ck_orders_status_known"), "orders", schema="orders")
    op.create_check_constraint(
        op.f("ck_orders_ck_orders_status_known"),
        "orders",
        f"status IN {OLD_STATES}",
        schema="orders",
    )
