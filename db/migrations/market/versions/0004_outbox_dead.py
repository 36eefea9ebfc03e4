"""outbox.dead_at: a message its receiver refused for good is dead, never sent again

The outbox relay (apps/common/outbox.py) sent every message again, with a backoff up to 5
minutes, until it was taken, whatever the answer. A message the receiver refuses for good (a 4xx
that sending it again cannot change, apps.common.internal_client.InternalCallError.refused) was
sent for ever, and a later change of the same child waited for it (audit LOW-4: a re-attach whose
label relations refuses blocked every change of that market place until a person deleted
the row). Such a message is now dead: ``dead_at`` set (and
``next_attempt_at`` NULL, so a relay of the release before this one never picks it either),
logged once as an error, counted in ``rose_outbox_dead``, left for a person.

Additive: the release before this one neither reads nor writes it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "outbox", sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True), schema="market"
    )


def downgrade() -> None:
    op.drop_column("outbox", "dead_at", schema="market")
