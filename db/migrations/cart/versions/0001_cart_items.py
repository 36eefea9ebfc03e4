"""cart_items: the only table cart owns after the split

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import timestamps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cart_items",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("market_place_container_id", sa.BigInteger, nullable=False),
        # The order whose payment cleared this line (clear-cart-for-order is idempotent by it).
        sa.Column("order_id", sa.BigInteger, nullable=True),
        *timestamps(),
        sa.CheckConstraint(
            "user_id IS NOT NULL OR session_id IS NOT NULL", name="ck_cart_items_has_owner"
        ),
        sa.CheckConstraint("quantity > 0", name="ck_cart_items_quantity_positive"),
        schema="cart",
    )
    # One active line per product in a user's cart, and in an anonymous session's cart.
    op.create_index(
        "uq_cart_items_user_product",
        "cart_items",
        ["user_id", "product_id"],
        unique=True,
        schema="cart",
        postgresql_where=sa.text("deleted_at IS NULL AND user_id IS NOT NULL"),
    )
    op.create_index(
        "uq_cart_items_session_product",
        "cart_items",
        ["session_id", "product_id"],
        unique=True,
        schema="cart",
        postgresql_where=sa.text("deleted_at IS NULL AND user_id IS NULL"),
    )
    op.create_index("ix_cart_items_order_id", "cart_items", ["order_id"], schema="cart")


def downgrade() -> None:
    op.drop_table("cart_items", schema="cart")
