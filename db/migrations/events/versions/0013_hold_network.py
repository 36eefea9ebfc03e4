"""calendar_entries.hold_network: the client network an anonymous hold was made from

Anyone could hold every bookable entry without an account: a client minting a session per
booking (``GET /auth/session`` without a cookie, then ``POST /entries/{id}/book/``) held all of
them for EVENTS_HOLD_SECONDS, again and again, from one address. An anonymous booking now
records its client network (an address, an IPv6 client's /64), and a network holds at most
EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS live anonymous holds (``ix_calendar_entries_anonymous_holds``
counts them).

Beside the running release: the column is added in a short transaction that waits at most 1 s
for the table (then fails, changing nothing: run it again); the partial index is built
CONCURRENTLY (bookings go on meanwhile), and an invalid one an interrupted build left is dropped
first. Existing rows keep NULL (not counted). Additive: the release before this one neither
reads nor writes it, so while the two run side by side an entry it holds anonymously records
no network (not counted), and one it books again after a hold of this release ended keeps that
hold's network (counted for that network until the new hold ends, or its order's, should it
check the entry out).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEX = "ix_calendar_entries_anonymous_holds"
# apps/events/models.py: ANONYMOUS_HOLD_ROWS (a migration keeps its own copy: it must not change).
ANONYMOUS_HOLD_ROWS = "state = 'pending' AND user_id IS NULL AND hold_network IS NOT NULL"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute("ALTER TABLE events.calendar_entries ADD COLUMN IF NOT EXISTS hold_network inet")
    with op.get_context().autocommit_block():
        invalid = (
            op.get_bind()
            .exec_driver_sql(
                "SELECT NOT indisvalid FROM pg_index "
                f"WHERE indexrelid = to_regclass('events.{INDEX}')"
            )
            .scalar()
        )
        if invalid:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} "
            "ON events.calendar_entries (hold_network, hold_expires_at) "
            f"WHERE {ANONYMOUS_HOLD_ROWS}"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{INDEX}")
    op.drop_column("calendar_entries", "hold_network", schema="events")
