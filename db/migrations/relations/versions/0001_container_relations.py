"""container_relations, its export view, idempotency keys

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
        "container_relations",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("parent_type", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.BigInteger, nullable=False),
        sa.Column("child_type", sa.String(32), nullable=False),
        sa.Column("child_id", sa.BigInteger, nullable=False),
        sa.Column("sort_order", sa.Integer, nullable=False, server_default="0"),
        sa.Column("label", sa.String(255), nullable=True),
        *timestamps(),
        schema="relations",
    )
    # One active row per parent/child pair; detached rows stay as history.
    op.create_index(
        "uq_container_relations_active_pair",
        "container_relations",
        ["parent_type", "parent_id", "child_type", "child_id"],
        unique=True,
        schema="relations",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    # get-children: a parent's active children in sort order.
    op.create_index(
        "ix_container_relations_children",
        "container_relations",
        ["parent_type", "parent_id", "sort_order"],
        schema="relations",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    # Which parents is a child attached to (detaching a market place everywhere, say).
    op.create_index(
        "ix_container_relations_child",
        "container_relations",
        ["child_type", "child_id"],
        schema="relations",
    )
    create_idempotency_keys("relations")
    # What other services may read (blog <- relations): active relations only, no soft-delete
    # column, so a consumer cannot see detached history by mistake.
    op.execute(
        """
        CREATE VIEW export.container_relations AS
        SELECT id, parent_type, parent_id, child_type, child_id, sort_order, label,
               created_at, updated_at
        FROM relations.container_relations
        WHERE deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.container_relations")
    op.drop_table("idempotency_keys", schema="relations")
    op.drop_table("container_relations", schema="relations")
