"""outbox.traceparent and reconciliation_passes

- ``outbox.traceparent``: the W3C trace context of the transaction that queued a message; the
  relay's delivery continues that trace (apps/common/observability.py). Existing rows keep NULL
  (delivered in a trace of their own).
- ``reconciliation_passes``: one row per reconciliation pass, whichever orders process ran it
  (one pass per interval across every process; the reconciliation lag metric reads it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("traceparent", sa.String(64)), schema="orders")
    op.create_table(
        "reconciliation_passes",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("process", sa.String(100), nullable=False),
        sa.Column("checked", sa.Integer, nullable=False, server_default="0"),
        sa.Column("paid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        schema="orders",
    )


def downgrade() -> None:
    op.drop_table("reconciliation_passes", schema="orders")
    op.drop_column("outbox", "traceparent", schema="orders")
