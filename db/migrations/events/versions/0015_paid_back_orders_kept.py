"""given_back_orders.paid_back: an order whose payment went back whole is remembered for good

release-for-order with ``paid_back`` (orders' review found the paid order's money given back at
SumUp) records the order in ``given_back_orders``, and confirm-for-order confirms nothing for it
from then on. The sweeper forgot every given-back order after a day (a hold for an expired order
is sent within create-order's deadline), so a confirm of a paid-back order that died in orders'
outbox and was resent by a person later confirmed the buyer's bookings held in their cart again:
goods for money that went back (review L5). Such rows are now kept; the others go after the day
as before.

Beside the running release: the column, with a constant default, is added in a short
transaction that waits at most 1 s for the table (then fails, changing nothing: run it again).
The release before this one neither reads nor writes it: a paid-back order it records keeps
false (forgotten after a day, as it would have been). Existing rows keep false: a row of a
paid-back order cannot be told from an expired one's.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute(
        "ALTER TABLE events.given_back_orders "
        "ADD COLUMN IF NOT EXISTS paid_back boolean NOT NULL DEFAULT false"
    )


def downgrade() -> None:
    op.drop_column("given_back_orders", "paid_back", schema="events")
