"""Every pending order has a deadline: ``ck_orders_pending_has_deadline``

Pending orders moved by a split run with an earlier main have no ``payable_until`` (the monolith
had none): they could be paid again without end, at prices from before the split, and were never
expired. They get now + 30 minutes (SumUp's hosted checkout session), as orders 0003 gave the
pending orders of an upgrade, so a buyer mid-checkout is not expired at once; then reconciliation
expires them the usual way (asking SumUp first). From here on the database refuses a pending
order without a deadline, whichever code path would write one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE orders.orders SET payable_until = now() + interval '30 minutes' "
        "WHERE status = 'pending' AND payable_until IS NULL"
    )
    op.create_check_constraint(
        op.f("ck_orders_pending_has_deadline"),
        "orders",
        "status <> 'pending' OR payable_until IS NOT NULL",
        schema="orders",
    )


def downgrade() -> None:
    # The deadlines stay: which orders had none is not recorded, and none should.
    op.drop_constraint(op.f("ck_orders_pending_has_deadline"), "orders", schema="orders")
