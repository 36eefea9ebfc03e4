"""the page configs export view names a draft page by no title

Every page with a config is exported, drafts included (an editor prepares a page, its market and
its cart before publishing it), and cart showed a draft page's title to buyers: in the cart's
groups of lines and at the page's own cart. ``page_title`` is now the title of a published page
only (NULL for a draft, as for the site's config): cart names a page without one by its number
(its page cart by its address). 0008 did the same for events' ``export.pages``.

The same columns in the same order (CREATE OR REPLACE VIEW), still a security barrier (0007);
the consumers' foreign tables are unchanged. Only what a draft's row says changes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _page_configs(title: str) -> str:
    return f"""
        CREATE OR REPLACE VIEW export.page_configs WITH (security_barrier = true) AS
        SELECT pc.id,
               pc.container_type,
               pc.container_id,
               CASE WHEN pc.container_type = 'page' THEN p.slug END AS page_slug,
               {title} AS page_title,
               pc.features,
               pc.sumup_merchant_code,
               pc.sumup_checkout_prefix,
               (pc.sumup_merchant_code IS NOT NULL AND pc.sumup_api_key IS NOT NULL)
                   AS sumup_configured,
               pc.created_at,
               pc.updated_at
        FROM blog.page_configs AS pc
        LEFT JOIN blog.posts AS p ON pc.container_type = 'page' AND p.id = pc.container_id
        WHERE pc.deleted_at IS NULL
        """


def upgrade() -> None:
    # A moment's lock on the view beside the running release, as 0007 (its readers give up
    # after 2 s).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute(
        _page_configs(
            "CASE WHEN pc.container_type = 'page' AND p.status = 'published' THEN p.title END"
        )
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute(_page_configs("CASE WHEN pc.container_type = 'page' THEN p.title END"))
