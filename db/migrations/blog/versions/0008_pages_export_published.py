"""the pages export view says whether each page is published

Every page is exported, drafts included (market's admin may attach a market place to a page an
editor prepares), and events showed a draft page's title to the public: "on <its title>" beside
a calendar on it, "Calendars of <its title>" at its address. The view now says ``published``:
events names a page that is not by its number only.

A column added at the end (CREATE OR REPLACE VIEW keeps the others); still a security barrier
(0007). Additive: the release before this one reads the columns it named.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A moment's lock on the view beside the running release, as 0007 (its readers give up
    # after 2 s).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute(
        """
        CREATE OR REPLACE VIEW export.pages WITH (security_barrier = true) AS
        SELECT id, slug, title, status = 'published' AS published
        FROM blog.posts
        WHERE is_page
        """
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    # A view cannot drop a column in place: made again as 0003 made it, a barrier as 0007.
    op.execute("DROP VIEW IF EXISTS export.pages")
    op.execute(
        """
        CREATE VIEW export.pages WITH (security_barrier = true) AS
        SELECT id, slug, title
        FROM blog.posts
        WHERE is_page
        """
    )
