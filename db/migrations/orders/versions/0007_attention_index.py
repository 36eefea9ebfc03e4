"""ix_orders_attention: the orders a person must look at, without reading every order

`rose orders attention` (the data call ``attention``) OR-ed "flagged" and "refund due" on the
orders table: a full scan, at any size. This partial index holds only those orders.

Built beside the running services without holding the table (``CONCURRENTLY``, outside a
transaction): create-order and the webhook go on writing orders during the build. A build
interrupted before leaves an invalid index of this name behind; it is dropped first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# apps/orders/models.py: NEEDS_A_PERSON (a migration keeps its own copy: it must not change).
NEEDS_A_PERSON = "flagged IS TRUE OR status = 'refund_due'"


def _drop_index() -> None:
    op.drop_index(
        "ix_orders_attention",
        "orders",
        schema="orders",
        if_exists=True,
        postgresql_concurrently=True,
    )


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _drop_index()
        op.create_index(
            "ix_orders_attention",
            "orders",
            ["id"],
            schema="orders",
            postgresql_where=sa.text(NEEDS_A_PERSON),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _drop_index()
