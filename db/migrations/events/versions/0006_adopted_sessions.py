"""adopted_sessions: anonymous sessions sign-in gave to a user

Sign-in adopts the session's bookings to the user. A booking still carrying the session (sent
as the browser signed in) is refused instead of being held for a session nobody uses again,
and an anonymous checkout still in flight is told the buyer signed in rather than that the
holds ended. Rows are a day's worth: the sweeper deletes older ones. A new table only: an older
release ignores it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op

from apps.common.migration_helpers import create_adopted_sessions

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_adopted_sessions("events")


def downgrade() -> None:
    op.drop_table("adopted_sessions", schema="events")
