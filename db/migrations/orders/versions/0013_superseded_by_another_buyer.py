"""Repair (audit s21 F3): orders another buyer's checkout superseded stop naming that order

Before the fix of audit s21 F3, a checkout could supersede ANOTHER buyer's pending order that
claimed the same calendar entry (a stale claim: its buyer had taken the entry out of the cart).
The superseded order's checkout was closed, and its page told its buyer to pay the other buyer's
order ("your latest checkout of these goods is order N: pay that one instead"), its JSON naming
that order (superseded_by, latest_checkout_id).

Such an order is found by its superseding order belonging to another buyer: neither the same
user nor the same session (a buyer's own orders share one or the other; sign-in's adoption gives
the user to the session's orders). It names that order no more (superseded_by cleared), and one
still 'superseded' becomes 'expired': it could not be paid since (its checkout was closed), and
its page says so and sends its buyer to check out again. One that moved on (a late payment:
refund_due, refunded) keeps its status. Money rows (attempts, refunds) are not touched; the other
buyer's order is not touched. Run again, it finds nothing. Data only; nothing to undo.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE orders.orders AS replaced
        SET status = CASE WHEN replaced.status = 'superseded' THEN 'expired'
                          ELSE replaced.status END,
            superseded_by = NULL,
            updated_at = now()
        FROM orders.orders AS other
        WHERE other.id = replaced.superseded_by
          AND NOT coalesce(other.user_id = replaced.user_id, false)
          AND NOT coalesce(other.session_id = replaced.session_id, false)
        """
    )


def downgrade() -> None:
    pass
