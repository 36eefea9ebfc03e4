"""calendar_entries: a network's holds are counted whether or not sign-in adopted them

A network may hold EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS entries at once without signing in. Sign-in
adopted them for the account and cleared their network, which freed the network's places: one
account signing in and out held the limit again each time (review 3). The release with this
migration keeps an adopted entry's network and counts the holds made from a network whether
their owner is a session or, since, a user: the partial index of that count
(``ix_calendar_entries_anonymous_holds``, ``... AND user_id IS NULL ...``) is replaced by
``ix_calendar_entries_network_holds`` without the owner in its predicate.

Beside the running release: the new index is built CONCURRENTLY (bookings go on meanwhile; an
invalid one an interrupted build left is dropped first), then the old one dropped CONCURRENTLY.
The release before this one counts with its own predicate, which no index then serves: a scan
of the pending entries, a few, until it is replaced. Entries adopted before this migration
have no network and are not counted for one (they end within the hold's time).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

NEW = "ix_calendar_entries_network_holds"
OLD = "ix_calendar_entries_anonymous_holds"
# apps/events/models.py: NETWORK_HOLD_ROWS, and events 0013's predicate (a migration keeps its
# own copies: they must not change).
NETWORK_HOLD_ROWS = "state = 'pending' AND hold_network IS NOT NULL"
ANONYMOUS_HOLD_ROWS = "state = 'pending' AND user_id IS NULL AND hold_network IS NOT NULL"


def _build(index: str, predicate: str) -> None:
    invalid = (
        op.get_bind()
        .exec_driver_sql(
            f"SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass('events.{index}')"
        )
        .scalar()
    )
    if invalid:
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{index}")
    op.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} "
        f"ON events.calendar_entries (hold_network, hold_expires_at) WHERE {predicate}"
    )


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _build(NEW, NETWORK_HOLD_ROWS)
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{OLD}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _build(OLD, ANONYMOUS_HOLD_ROWS)
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS events.{NEW}")
