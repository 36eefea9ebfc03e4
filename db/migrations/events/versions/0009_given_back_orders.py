"""Orders whose holds were given back, so that a late hold for one holds nothing

``given_back_orders``: release-for-order with ``rolled_back`` records the order (it never
existed: create-order failed after asking events to hold its bookings). A hold for that order
that reaches events after the give-back (sent before orders gave up, and slower) is refused
instead of holding the bookings for no order until its payable time and 30 minutes more.
Kept a day by the sweeper.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "given_back_orders",
        sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(
            "given_back_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        schema="events",
    )
    op.create_index(
        "ix_given_back_orders_given_back_at",
        "given_back_orders",
        ["given_back_at"],
        schema="events",
    )


def downgrade() -> None:
    op.drop_table("given_back_orders", schema="events")
