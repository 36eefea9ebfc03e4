"""posts, page_configs, idempotency keys, the export views page_configs and page_payment_configs

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from apps.common.migration_helpers import create_idempotency_keys, timestamps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "posts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("slug", sa.String(255), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False, server_default=""),
        sa.Column("is_page", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint("slug", name="uq_posts_slug"),
        sa.CheckConstraint("status IN ('draft', 'published')", name="ck_posts_status_known"),
        sa.CheckConstraint(
            "status <> 'published' OR published_at IS NOT NULL",
            name="ck_posts_published_has_date",
        ),
        schema="blog",
    )
    # The public list: published posts (or pages), newest first.
    op.create_index(
        "ix_posts_published",
        "posts",
        ["is_page", sa.text("published_at DESC"), "id"],
        schema="blog",
        postgresql_where=sa.text("status = 'published'"),
    )

    op.create_table(
        "page_configs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("container_type", sa.String(32), nullable=False),
        sa.Column("container_id", sa.BigInteger, nullable=False),
        sa.Column(
            "features",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("sumup_merchant_code", sa.String(32), nullable=True),
        sa.Column("sumup_api_key", sa.String(255), nullable=True),
        sa.Column("sumup_checkout_prefix", sa.String(40), nullable=True),
        *timestamps(),
        sa.CheckConstraint(
            "jsonb_typeof(features) = 'object'", name="ck_page_configs_features_is_object"
        ),
        schema="blog",
    )
    # One active config per container; the arbiter of page-config-ensure's ON CONFLICT, so
    # concurrent ensures of a new container create one row.
    op.create_index(
        "uq_page_configs_active_container",
        "page_configs",
        ["container_type", "container_id"],
        unique=True,
        schema="blog",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    create_idempotency_keys("blog")

    # What cart (and orders) read through postgres_fdw: active configs, the page's slug and title,
    # whether SumUp is configured, and never the API key.
    op.execute(
        """
        CREATE VIEW export.page_configs AS
        SELECT pc.id,
               pc.container_type,
               pc.container_id,
               CASE WHEN pc.container_type = 'page' THEN p.slug END AS page_slug,
               CASE WHEN pc.container_type = 'page' THEN p.title END AS page_title,
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
    )
    # Only the orders edge is granted this one (db/fdw/manifest.toml): checkout needs the key.
    op.execute(
        """
        CREATE VIEW export.page_payment_configs AS
        SELECT id, container_type, container_id, sumup_merchant_code, sumup_api_key,
               sumup_checkout_prefix
        FROM blog.page_configs
        WHERE deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.page_payment_configs")
    op.execute("DROP VIEW IF EXISTS export.page_configs")
    op.drop_table("idempotency_keys", schema="blog")
    op.drop_table("page_configs", schema="blog")
    op.drop_table("posts", schema="blog")
