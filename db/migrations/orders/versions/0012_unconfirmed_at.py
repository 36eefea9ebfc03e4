"""order_items.unconfirmed_at: when events said it could not confirm a booking of the order

Events answers an order's confirm-for-order with the bookings it could not confirm (the buyer
removed them from the cart the moment before); orders records that on the order's lines, in the
same transaction as the rest of its handling (settlement's bookings_not_confirmed), and the
order's pages say which bookings could not be confirmed, for any order, paid or free. Before
this, a page inferred it from the claims the order had lost, and only for free orders: a paid
order whose unconfirmed booking was free (nothing refunded) said nothing.

Existing rows: where those lost claims still tell the fact, it is filled in; elsewhere it stays
NULL (not known). The only thing that drops an order's booking claim is events' answer, and 0010,
which dropped every booking claim of an order with a refund for unconfirmed bookings. So a
booking line without its claim was not confirmed when its order still claims something (orders
moved by the split claim nothing) and 0010 did not touch it: it has no such refund, or it still
claims some booking. The time is when the order's confirm-bookings message was delivered (its
answer is handled in that transaction), else when the order was paid. Orders refunded for
unconfirmed bookings before 0010 (which of their bookings is not known here: their refund's
reason names them) and orders that claim nothing keep NULL.

Only booking lines can be unconfirmed (a check). Additive: the release before this one neither
reads nor writes it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "order_items",
        sa.Column("unconfirmed_at", sa.DateTime(timezone=True), nullable=True),
        schema="orders",
    )
    op.create_check_constraint(
        op.f("ck_order_items_unconfirmed_is_a_booking"),
        "order_items",
        "unconfirmed_at IS NULL OR kind IN ('calendar_entry', 'ticket')",
        schema="orders",
    )
    op.execute(
        """
        UPDATE orders.order_items AS item
        SET unconfirmed_at = coalesce(
            (
                SELECT message.delivered_at FROM orders.outbox AS message
                WHERE message.idempotency_key
                    = format('orders:%s:confirm-bookings', item.order_id)
            ),
            "order".paid_at,
            "order".updated_at
        )
        FROM orders.orders AS "order"
        WHERE "order".id = item.order_id
          AND item.kind IN ('calendar_entry', 'ticket')
          AND NOT EXISTS (
              SELECT FROM orders.order_claims AS claim
              WHERE claim.order_id = item.order_id
                AND claim.kind = item.kind
                AND claim.ref_id = item.source_id
          )
          AND EXISTS (SELECT FROM orders.order_claims AS claim WHERE claim.order_id = item.order_id)
          AND (
              NOT EXISTS (
                  SELECT FROM orders.refunds AS refund
                  WHERE refund.order_id = item.order_id
                    AND refund.reason_key LIKE 'unconfirmed-bookings:%'
              )
              OR EXISTS (
                  SELECT FROM orders.order_claims AS claim
                  WHERE claim.order_id = item.order_id
                    AND claim.kind IN ('calendar_entry', 'ticket')
              )
          )
        """
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("ck_order_items_unconfirmed_is_a_booking"), "order_items", schema="orders"
    )
    op.drop_column("order_items", "unconfirmed_at", schema="orders")
