"""The cart's own hold of a booking, kept while orders hold it (audit s21 F1)

``cart_hold_expires_at`` on entries and tickets: when an order holds a booking that its buyer's
cart held, the cart's expiry is kept here, whatever other orders hold it after. A give-back of
an order that never existed (release-for-order with ``rolled_back``) puts the booking back on
the order hold it had before only when that order was not given back itself, and otherwise on
this cart hold; before, only one earlier hold was remembered, so two failed checkouts in a row
could end the booking's hold at once and take it out of the cart.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("calendar_entries", "tickets")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table, sa.Column("cart_hold_expires_at", sa.DateTime(timezone=True)), schema="events"
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "cart_hold_expires_at", schema="events")
