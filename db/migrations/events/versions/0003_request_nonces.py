"""request_nonces: the signed actions accepted within the signature's validity window

A second delivery of the same signed internal action (a replay) finds its nonce here and is
refused, so it has no second effect (apps/common/nonces.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op

from apps.common.migration_helpers import create_request_nonces

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_request_nonces("events")


def downgrade() -> None:
    op.drop_table("request_nonces", schema="events")
