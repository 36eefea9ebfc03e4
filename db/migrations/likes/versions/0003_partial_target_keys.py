"""likes: each target key indexes only the rows it names

A product like has a slug and no id, a post like an id and no slug (the check constraint). The
two unique keys and the slug index held every row anyway, the other kind's under NULL, which no
lookup and no uniqueness needs. As partial indexes, each like is in one unique key, and only
product likes in the slug index: two index entries fewer per like written, and smaller
indexes. The names stay: the ON CONFLICT arbiters name the columns, and say which rows with
``WHERE``.

The indexes are built while the migration holds the table (its transaction), so writes to
likes wait for the builds: ~0.1 s at the scale of the split's practice monolith (86,748 likes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SLUG_KEY = "uq_likes_user_id_target_type_target_slug"
ID_KEY = "uq_likes_user_id_target_type_target_id"


def upgrade() -> None:
    op.drop_constraint(SLUG_KEY, "likes", schema="likes", type_="unique")
    op.drop_constraint(ID_KEY, "likes", schema="likes", type_="unique")
    op.drop_index("ix_likes_target", "likes", schema="likes")
    op.create_index(
        SLUG_KEY,
        "likes",
        ["user_id", "target_type", "target_slug"],
        unique=True,
        schema="likes",
        postgresql_where=sa.text("target_slug IS NOT NULL"),
    )
    op.create_index(
        ID_KEY,
        "likes",
        ["user_id", "target_type", "target_id"],
        unique=True,
        schema="likes",
        postgresql_where=sa.text("target_id IS NOT NULL"),
    )
    # Who liked this product (counts, the split's verification).
    op.create_index(
        "ix_likes_target",
        "likes",
        ["target_type", "target_slug"],
        schema="likes",
        postgresql_where=sa.text("target_slug IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_likes_target", "likes", schema="likes")
    op.drop_index(ID_KEY, "likes", schema="likes")
    op.drop_index(SLUG_KEY, "likes", schema="likes")
    op.create_unique_constraint(
        SLUG_KEY, "likes", ["user_id", "target_type", "target_slug"], schema="likes"
    )
    op.create_unique_constraint(
        ID_KEY, "likes", ["user_id", "target_type", "target_id"], schema="likes"
    )
    op.create_index("ix_likes_target", "likes", ["target_type", "target_slug"], schema="likes")
