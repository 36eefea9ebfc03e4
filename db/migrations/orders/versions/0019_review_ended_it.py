"""orders.review_ended_it: whether a person's review is what ended the order

An order's pages say "After a review, ..." of an order whose review ended it (a pending one it
expired or refunded, a paid one SumUp gave back whole). An order whose time to pay had passed
before a person flagged and reviewed it kept its status, and its page said the same: the review
ended nothing. end-review now records whether it changed the order's status.

Existing rows keep NULL: an order reviewed before is told as it was (by its flag reason).
Additive: the release before this one neither reads nor writes it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column("review_ended_it", sa.Boolean(), nullable=True),
        schema="orders",
    )


def downgrade() -> None:
    op.drop_column("orders", "review_ended_it", schema="orders")
