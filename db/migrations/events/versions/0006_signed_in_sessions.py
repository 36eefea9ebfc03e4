"""signed_in_sessions: which user each anonymous session signed in as

Sign-in adopts the session's bookings to the user; an anonymous checkout still in flight then
asks to hold them for the session and finds none. Events records the sign-in (kept a day, as
released_holds), so that refusal can say the buyer signed in rather than that the holds ended.
A new table only: an older release ignores it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signed_in_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column(
            "signed_in_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="events",
    )
    op.create_index(
        "ix_signed_in_sessions_signed_in_at",
        "signed_in_sessions",
        ["signed_in_at"],
        schema="events",
    )


def downgrade() -> None:
    op.drop_table("signed_in_sessions", schema="events")
