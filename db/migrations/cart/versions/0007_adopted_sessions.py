"""adopted_sessions: anonymous sessions sign-in gave to a user

An add that still carries such a session (sent as the browser signed in) is refused instead of
being written for a session nobody uses again. Rows are a day's worth: the next sign-in
deletes older ones. Additive: the release before this one neither reads nor writes it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adopted_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column(
            "adopted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="cart",
    )
    op.create_index(
        "ix_adopted_sessions_adopted_at", "adopted_sessions", ["adopted_at"], schema="cart"
    )


def downgrade() -> None:
    op.drop_table("adopted_sessions", schema="cart")
