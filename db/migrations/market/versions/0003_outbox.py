"""outbox: the undos relations could not be given when they were due

A market change that relations recorded, and that market then did not store (its commit
failed, or relations' answer came too late), is undone in relations. When relations cannot be
reached for that, the undo is queued here, in a transaction of its own, and the outbox relay
(apps/common/outbox.py, started by the market app) delivers it once relations answers, across
restarts (apps.relations.contract.RelationsLink). The same table as orders' outbox, with its
traceparent (orders 0005).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import create_outbox

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox("market")
    op.add_column("outbox", sa.Column("traceparent", sa.String(64)), schema="market")


def downgrade() -> None:
    op.drop_table("outbox", schema="market")
