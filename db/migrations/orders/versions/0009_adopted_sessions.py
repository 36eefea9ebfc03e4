"""adopted_sessions: anonymous sessions sign-in gave to a user

A create-order that still carries such a session (a checkout that read the cart as the
browser signed in) is refused instead of making an order for a session nobody uses again,
which no sign-in would adopt. Rows are a day's worth: the next sign-in deletes older ones.
Additive: the release before this one neither reads nor writes it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from alembic import op

from apps.common.migration_helpers import create_adopted_sessions

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_adopted_sessions("orders")


def downgrade() -> None:
    op.drop_table("adopted_sessions", schema="orders")
