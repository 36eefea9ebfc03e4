"""inbox_activities: the ActivityStreams activities cart's inbox applied, by their ids

A second delivery of an activity (the same id) answers what the first did and changes nothing
(docs/cart-inbox.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbox_activities",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("activity_hash", sa.String(64), nullable=False),
        sa.Column("answer", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="cart",
    )


def downgrade() -> None:
    op.drop_table("inbox_activities", schema="cart")
