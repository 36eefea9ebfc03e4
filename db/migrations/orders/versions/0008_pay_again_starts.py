"""pay_again_starts: new payment attempts (pay again) per client network in the last minute

Each new attempt costs up to three SumUp calls (read, close, create); the cap per order does
not bound a client holding many pending orders. Rows are a minute's worth: the next pay again
deletes older ones (apps/common/admission.py; the table is written here, not with its helper,
so that this revision never changes).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import INET

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pay_again_starts",
        sa.Column("network", INET, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="orders",
    )
    op.create_index(
        "ix_pay_again_starts_started_at", "pay_again_starts", ["started_at"], schema="orders"
    )


def downgrade() -> None:
    op.drop_table("pay_again_starts", schema="orders")
