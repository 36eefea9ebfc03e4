"""cleared_orders: the paid orders clear-cart-for-order has cleared, with what it answered

A repeated delivery of an order answers what the first one did and clears nothing more, even
when the first found nothing to clear (no cart line then recorded the order). Orders cleared
before this table (and the monolith's, moved by the split) are still recognised by the lines
that record them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cleared_orders",
        sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("cleared", sa.Integer, nullable=False),
        sa.Column(
            "cleared_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="cart",
    )


def downgrade() -> None:
    op.drop_table("cleared_orders", schema="cart")
