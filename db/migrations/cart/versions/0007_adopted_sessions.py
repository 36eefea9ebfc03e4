"""adopted_sessions: anonymous sessions sign-in gave to a user

An add that still carries such a session (sent as the browser signed in) is refused instead of
being written for a session nobody uses again. Rows are a day's worth: the next sign-in
deletes older ones. Additive: the release before this one neither reads nor writes it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

from apps.common.migration_helpers import create_adopted_sessions

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_adopted_sessions("cart")


def downgrade() -> None:
    op.drop_table("adopted_sessions", schema="cart")
