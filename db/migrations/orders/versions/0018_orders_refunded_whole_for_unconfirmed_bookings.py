"""Paid orders none of whose bookings events could confirm are being refunded, or refunded

Events could confirm none of the lines of such an order (the buyer took them out of the cart,
and another buyer booked them, before the payment was known): what was paid went back whole,
and the order still said "paid" (its pages, its API, a count of paid orders). The release with
this migration moves such an order to ``refund_due`` when it records that refund
(settlement's ``bookings_not_confirmed``); this moves the ones recorded before: ``refunded``
when every refund of the order is done, else ``refund_due`` (refunded once they are, as any
order being refunded). A flagged order is left as it is: its review decides.

Data only, a handful of rows. The release before this one reads either state as it reads any
order being refunded. Nothing to undo: the state says what happened to the money.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE orders.orders AS o
        SET status = CASE
                WHEN EXISTS (
                    SELECT FROM orders.refunds AS r
                    WHERE r.order_id = o.id AND r.status <> 'done'
                ) THEN 'refund_due'
                ELSE 'refunded'
            END,
            updated_at = now()
        WHERE o.status = 'paid'
          AND NOT o.flagged
          AND EXISTS (SELECT FROM orders.order_items AS i WHERE i.order_id = o.id)
          AND NOT EXISTS (
              SELECT FROM orders.order_items AS i
              WHERE i.order_id = o.id AND i.unconfirmed_at IS NULL
          )
          AND EXISTS (
              SELECT FROM orders.refunds AS r
              WHERE r.order_id = o.id AND r.reason_key LIKE 'unconfirmed-bookings:%'
          )
        """
    )


def downgrade() -> None:
    pass  # the state says what happened to the money: the release before reads it as any
