"""orders.paid_attempt_id: the payment attempt an order was paid with, recorded when it is paid

Before, "the payment a paid order was paid with" was inferred: its first attempt held PAID.
A review can find an earlier attempt paid at SumUp too (one orders held EXPIRED), give that
money back and record the attempt PAID; from then on the inference named the refunded attempt,
and the next review gave back the payment the order was really paid with (review L2). The
transition to paid now records the attempt (settlement's ``_PAY_ORDER``); settlement's second
payment, a refund of unconfirmed bookings and a review all read it.

Existing rows: an order paid (``paid_at`` set) gets its first attempt held PAID whose money
does not go back as another payment's (a second payment's or a review's refund is never
recorded for the attempt an order was paid with): an order a review gave an earlier payment
back for gets the one it kept, not the first held PAID the code took until now. An
order paid with nothing to pay has no attempt and keeps NULL.

The foreign key names the attempt with its order, ``(paid_attempt_id, id)`` to
``payment_attempts (id, order_id)`` (unique there for it), so an order can only name an attempt
of its own; ON DELETE SET NULL (of this column alone): the split's sync deletes an order's
attempts before the order itself.

Beside the running release: the unique index is built CONCURRENTLY; the column and the
constraints (NOT VALID) are added in a short transaction that waits at most 1 s for each table
(then fails, changing nothing of its own: run it again); the rows are filled in a transaction of
their own, and the constraints validated after it without holding writers. Run again after a
failure, it picks up where it stopped.

Additive: the release before this one neither reads nor writes it. An order it pays while
this release rolls out is left NULL; the same rule names its attempt
(apps.orders.settlement.PAID_WITH), and a review records it. Such an order with no attempt held
PAID, reported paid by one held EXPIRED (pay again closed it as SumUp took its payment: it may
be the one it was paid with), is flagged for a person, not given back.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


FOREIGN_KEY = "fk_orders_paid_attempt_id_payment_attempts"
CHECK = "ck_orders_paid_attempt_is_paid"
# What the foreign key names: an attempt, and that it is one of the order's own.
ATTEMPT_OF_ORDER = "uq_payment_attempts_id_order_id"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # Built beside the writers (create-order inserts attempts); a build interrupted before
        # left an invalid index of this name, dropped first (as orders 0007's).
        invalid = (
            op.get_bind()
            .exec_driver_sql(
                "SELECT NOT indisvalid FROM pg_index "
                f"WHERE indexrelid = to_regclass('orders.{ATTEMPT_OF_ORDER}')"
            )
            .scalar()
        )
        if invalid:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS orders.{ATTEMPT_OF_ORDER}")
        op.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {ATTEMPT_OF_ORDER} "
            "ON orders.payment_attempts (id, order_id)"
        )
    op.execute("SET LOCAL lock_timeout = '1s'")
    # Both tables at once, in the services' order (an order's row, then its attempts'): taken
    # one by one, the other way round, a webhook holding the order and waiting on its attempt
    # deadlocked with this.
    op.execute("LOCK TABLE orders.orders, orders.payment_attempts IN ACCESS EXCLUSIVE MODE")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (
                SELECT FROM pg_constraint
                WHERE conname = '{ATTEMPT_OF_ORDER}'
                  AND connamespace = 'orders'::regnamespace
            ) THEN
                ALTER TABLE orders.payment_attempts
                    ADD CONSTRAINT {ATTEMPT_OF_ORDER} UNIQUE USING INDEX {ATTEMPT_OF_ORDER};
            END IF;
        END
        $$
        """
    )
    op.execute("ALTER TABLE orders.orders ADD COLUMN IF NOT EXISTS paid_attempt_id bigint")
    op.execute(f"ALTER TABLE orders.orders DROP CONSTRAINT IF EXISTS {FOREIGN_KEY}")
    op.execute(
        f"""
        ALTER TABLE orders.orders
            ADD CONSTRAINT {FOREIGN_KEY}
            FOREIGN KEY (paid_attempt_id, id) REFERENCES orders.payment_attempts (id, order_id)
            ON DELETE SET NULL (paid_attempt_id) NOT VALID
        """
    )
    op.execute(f"ALTER TABLE orders.orders DROP CONSTRAINT IF EXISTS {CHECK}")
    op.execute(
        f"""
        ALTER TABLE orders.orders
            ADD CONSTRAINT {CHECK} CHECK (paid_attempt_id IS NULL OR paid_at IS NOT NULL)
            NOT VALID
        """
    )
    with op.get_context().autocommit_block():
        op.execute(
            """
            UPDATE orders.orders AS "order"
            SET paid_attempt_id = first_paid.id
            FROM (
                SELECT DISTINCT ON (attempt.order_id) attempt.order_id, attempt.id
                FROM orders.payment_attempts AS attempt
                WHERE attempt.status = 'PAID'
                  AND NOT EXISTS (
                      SELECT FROM orders.refunds AS refund
                      WHERE refund.attempt_id = attempt.id
                        AND (refund.reason_key LIKE 'late-payment:%'
                             OR refund.reason_key LIKE 'review:%')
                  )
                ORDER BY attempt.order_id, attempt.number
            ) AS first_paid
            WHERE first_paid.order_id = "order".id
              AND "order".paid_at IS NOT NULL
              AND "order".paid_attempt_id IS NULL
            """
        )
        op.execute(f"ALTER TABLE orders.orders VALIDATE CONSTRAINT {FOREIGN_KEY}")
        op.execute(f"ALTER TABLE orders.orders VALIDATE CONSTRAINT {CHECK}")


def downgrade() -> None:
    op.drop_column("orders", "paid_attempt_id", schema="orders")
    op.execute(f"ALTER TABLE orders.payment_attempts DROP CONSTRAINT IF EXISTS {ATTEMPT_OF_ORDER}")
