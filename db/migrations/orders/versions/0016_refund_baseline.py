"""refunds.sumup_refunded_before: what SumUp had refunded of the payment when a refund was asked

A refund whose request's answer was lost (a timeout, an outage mid-call) is settled by reading
SumUp's transaction back. Its refunds were counted whole: a 2.00 refund never made was settled
done by a 3.00 a person had given back in SumUp's dashboard before it was asked, and the buyer
never got the 2.00. Each request now records SumUp's refunded total of the payment read right
before it (settlement's ``settle_refund``); only what SumUp refunded since counts for it.

Existing rows keep NULL: their requests are judged as before (SumUp's refunds against the
payment's settled refunds). Additive: the release before this one neither reads nor writes it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "refunds",
        sa.Column("sumup_refunded_before", sa.Numeric(12, 2), nullable=True),
        schema="orders",
    )


def downgrade() -> None:
    op.drop_column("refunds", "sumup_refunded_before", schema="orders")
