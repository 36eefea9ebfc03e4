"""payment_attempts.checked_at: when SumUp was last asked about an attempt

Reconciliation asks about the attempts it has asked about least recently, so a large backlog
of pending orders (after the split, say) is worked through instead of the same oldest ones being
asked about every round.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "payment_attempts",
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        schema="orders",
    )
    # Reconciliation's scan: open attempts, least recently checked first.
    op.create_index(
        "ix_payment_attempts_open_checked",
        "payment_attempts",
        ["checked_at"],
        schema="orders",
        postgresql_where=sa.text("status IN ('PENDING', 'FAILED')"),
    )


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_open_checked", "payment_attempts", schema="orders")
    op.drop_column("payment_attempts", "checked_at", schema="orders")
