"""Queued confirm-for-order messages name the order's buyer

A release before events 0002 queued confirm-for-order as {order_id, entry_ids, ticket_ids}: every
pending booking was its owner's until confirmed, so the buyer was not needed. Events now confirms
only bookings held for the order or for the buyer the message names, and a booking made before
events 0002 is held for no order. Such a message still undelivered at the upgrade (events down
when the payment came, or the deploy stopped the relay first) found the paid booking
unconfirmed, and orders refunded it. Each undelivered one is given the order's buyer, as the
release after it writes the message (settlement's ``_enqueue_after_payment``).

Data only, on rows nobody reads but the relay; the release before this one sends the message as
it finds it. Nothing to undo: the buyer named is the order's own.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE orders.outbox AS message
        SET payload = message.payload
            || jsonb_build_object('user_id', buyer.user_id, 'session_id', buyer.session_id)
        FROM orders.orders AS buyer
        WHERE message.service = 'events'
          AND message.action = 'confirm-for-order'
          AND message.delivered_at IS NULL
          AND NOT (message.payload ? 'user_id' OR message.payload ? 'session_id')
          AND buyer.id = (message.payload ->> 'order_id')::bigint
        """
    )


def downgrade() -> None:
    pass  # the buyer named is the order's own: the release before reads it as it reads any
