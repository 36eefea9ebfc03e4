"""likes (products and posts in one table), its export view, idempotency keys

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import create_idempotency_keys, timestamps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "likes",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_slug", sa.String(255), nullable=True),
        sa.Column("target_id", sa.BigInteger, nullable=True),
        *timestamps(),
        # The arbiters of toggle/set's INSERT ... ON CONFLICT: one row per user and target.
        sa.UniqueConstraint(
            "user_id", "target_type", "target_slug", name="uq_likes_user_id_target_type_target_slug"
        ),
        sa.UniqueConstraint(
            "user_id", "target_type", "target_id", name="uq_likes_user_id_target_type_target_id"
        ),
        # A product is named by slug, a post by id; nothing else is a target.
        sa.CheckConstraint(
            "(target_type = 'product' AND target_slug IS NOT NULL AND target_id IS NULL)"
            " OR (target_type = 'post' AND target_id IS NOT NULL AND target_slug IS NULL)",
            name="ck_likes_target_matches_type",
        ),
        schema="likes",
    )
    # Who liked this product (counts, the split's verification).
    op.create_index("ix_likes_target", "likes", ["target_type", "target_slug"], schema="likes")
    # This user's active likes of one type: the remote scan of market's ?liked=true and of every
    # is_liked annotation. Covering, so the scan reads the index only.
    op.create_index(
        "ix_likes_user_active",
        "likes",
        ["user_id", "target_type"],
        schema="likes",
        postgresql_include=["target_slug", "target_id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    create_idempotency_keys("likes")
    # What market and blog read through postgres_fdw: active likes only, no soft-delete column.
    op.execute(
        """
        CREATE VIEW export.likes AS
        SELECT id, user_id, target_type, target_slug, target_id, created_at
        FROM likes.likes
        WHERE deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.likes")
    op.drop_table("idempotency_keys", schema="likes")
    op.drop_table("likes", schema="likes")
