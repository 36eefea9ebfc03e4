"""orders.paid_attempt_id: the payment attempt an order was paid with, recorded when it is paid

Before, "the payment a paid order was paid with" was inferred: its first attempt held PAID.
A review can find an earlier attempt paid at SumUp too (one orders held EXPIRED), give that
money back and record the attempt PAID; from then on the inference named the refunded attempt,
and the next review gave back the payment the order was really paid with (review L2). The
transition to paid now records the attempt (settlement's ``_PAY_ORDER``); settlement's second
payment, a refund of unconfirmed bookings and a review all read it.

Existing rows: an order paid (``paid_at`` set) gets its first attempt held PAID, the rule the
code used until now, so nothing that was decided changes meaning. An order paid with nothing
to pay has no attempt and keeps NULL. ON DELETE SET NULL (of this column alone): the split's
sync deletes an order's attempts before the order itself.

Additive: the release before this one neither reads nor writes it. An order it pays while
this release rolls out is left NULL, and settlement falls back to the inference for it
(apps.orders.settlement.paid_attempt_id).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orders", sa.Column("paid_attempt_id", sa.BigInteger(), nullable=True), schema="orders"
    )
    op.execute(
        """
        ALTER TABLE orders.orders
            ADD CONSTRAINT fk_orders_paid_attempt_id_payment_attempts
            FOREIGN KEY (paid_attempt_id) REFERENCES orders.payment_attempts (id)
            ON DELETE SET NULL (paid_attempt_id)
        """
    )
    op.create_check_constraint(
        op.f("ck_orders_paid_attempt_is_paid"),
        "orders",
        "paid_attempt_id IS NULL OR paid_at IS NOT NULL",
        schema="orders",
    )
    op.execute(
        """
        UPDATE orders.orders AS "order"
        SET paid_attempt_id = first_paid.id
        FROM (
            SELECT DISTINCT ON (attempt.order_id) attempt.order_id, attempt.id
            FROM orders.payment_attempts AS attempt
            WHERE attempt.status = 'PAID'
            ORDER BY attempt.order_id, attempt.number
        ) AS first_paid
        WHERE first_paid.order_id = "order".id
          AND "order".paid_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_column("orders", "paid_attempt_id", schema="orders")
