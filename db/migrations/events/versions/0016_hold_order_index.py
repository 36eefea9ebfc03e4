"""calendar_entries and tickets: an index of the bookings held for an order

Every call of orders about an order's holds (hold-for-order, confirm-for-order,
release-for-order) finds its bookings by ``hold_order_id``, and reconciliation's
``orders-holding`` lists the orders holding bookings each pass: without an index each read
scanned both tables. A partial index of the rows held for an order (few beside the tables).

Beside the running release: each index is built CONCURRENTLY (bookings go on meanwhile), and
an invalid one an interrupted build left is dropped first. Additive: the release before this
one neither needs nor minds them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_calendar_entries_hold_order_id": "calendar_entries",
    "ix_tickets_hold_order_id": "tickets",
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for index, table in INDEXES.items():
            invalid = (
                op.get_bind()
                .exec_driver_sql(
                    "SELECT NOT indisvalid FROM pg_index "
                    f"WHERE indexrelid = to_regclass('events.{index}')"
                )
                .scalar()
            )
            if invalid:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{index}")
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} "
                f"ON events.{table} (hold_order_id) WHERE hold_order_id IS NOT NULL"
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{index}")
