"""What a booking's hold was before orders held it for an order (audit s20 M1 b)

``prior_hold_order_id`` and ``prior_hold_expires_at`` on entries and tickets: the hold a booking
had (a cart's, or an earlier order's) when hold-for-order held it for another order. An order
create-order rolled back after the hold (SumUp refused, or orders gave up waiting for events)
never existed: release-for-order with ``rolled_back`` puts the booking back on that hold,
instead of leaving it held for no order until the order's payable time and 30 minutes more.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("calendar_entries", "tickets")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("prior_hold_order_id", sa.BigInteger), schema="events")
        op.add_column(
            table, sa.Column("prior_hold_expires_at", sa.DateTime(timezone=True)), schema="events"
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "prior_hold_expires_at", schema="events")
        op.drop_column(table, "prior_hold_order_id", schema="events")
