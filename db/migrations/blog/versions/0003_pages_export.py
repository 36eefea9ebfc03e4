"""the pages export view: the id, slug and title of every page (market and events show them)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What market (its admin's choice of page) and events (a calendar's page) read through
    # postgres_fdw: every page, drafts included (an editor may prepare one).
    op.execute(
        """
        CREATE VIEW export.pages AS
        SELECT id, slug, title
        FROM blog.posts
        WHERE is_page
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.pages")
