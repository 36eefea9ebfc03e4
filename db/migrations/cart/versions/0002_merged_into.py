"""cart_items.merged_into_id: the line sign-in merged an anonymous line into

An order made before sign-in names the anonymous line; when sign-in merges that line into the
user's line of the same product, the order's payment clears what it bought from the user's line
(and a newer order sharing either line supersedes it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cart_items",
        sa.Column(
            "merged_into_id",
            sa.BigInteger,
            sa.ForeignKey("cart.cart_items.id", name="fk_cart_items_merged_into_id_cart_items"),
            nullable=True,
        ),
        schema="cart",
    )
    op.create_index(
        "ix_cart_items_merged_into_id",
        "cart_items",
        ["merged_into_id"],
        schema="cart",
        postgresql_where=sa.text("merged_into_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_cart_items_merged_into_id", "cart_items", schema="cart")
    op.drop_column("cart_items", "merged_into_id", schema="cart")
