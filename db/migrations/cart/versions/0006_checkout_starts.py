"""checkout_starts: new anonymous carts checked out per client network in the last minute

What bounds a client that starts a new browser session for every checkout (orders' own limit
counts per session). Rows are a minute's worth: the next checkout deletes older ones.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import INET

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkout_starts",
        sa.Column("network", INET, primary_key=True),
        sa.Column("cart_key", sa.String(200), primary_key=True),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="cart",
    )
    op.create_index(
        "ix_checkout_starts_started_at", "checkout_starts", ["started_at"], schema="cart"
    )


def downgrade() -> None:
    op.drop_table("checkout_starts", schema="cart")
