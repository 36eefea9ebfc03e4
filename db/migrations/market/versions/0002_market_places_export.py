"""the market_places export view: market places that exist, with their names (blog attaches them)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What blog reads through postgres_fdw: a page may attach only a market place listed here.
    op.execute(
        """
        CREATE VIEW export.market_places AS
        SELECT id, slug, name, container_type, container_id
        FROM market.market_places
        WHERE deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.market_places")
