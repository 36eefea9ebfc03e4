"""outbox: the undos relations could not be given when they were due

A events change that relations recorded, and that events then did not store (its commit
failed, or relations' answer came too late), is undone in relations. When relations cannot be
reached for that, the undo is queued here, in a transaction of its own, and the outbox relay
(apps/common/outbox.py, started by the events app) delivers it once relations answers, across
restarts (apps.relations.contract.RelationsLink). The same table as orders' outbox, with its
traceparent (orders 0005).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import create_outbox

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox("events")
    op.add_column("outbox", sa.Column("traceparent", sa.String(64)), schema="events")


def downgrade() -> None:
    op.drop_table("outbox", schema="events")
