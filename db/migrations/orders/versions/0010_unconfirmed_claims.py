"""Drop the claims paid orders kept on bookings events could not confirm

Before this release, a paid order kept its claim on a booking events could not confirm for it
(the buyer removed it from the cart before the payment was known, or its hold ended and it was
taken): its price was refunded, but the claim refused every later order of that booking ("already
paid for in order N"), and an entry is the same place for every buyer, so the entry could never
be checked out again. The release drops such a claim when events answers (settlement's
bookings_not_confirmed); this drops the ones left before it.

Which booking was not confirmed is known to events, not here; an order with a refund for
unconfirmed bookings has its booking claims dropped. Its other bookings were confirmed: nobody can
book them again, so their claims refused nothing. Data only; nothing to undo.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DELETE FROM orders.order_claims AS claim
        WHERE claim.kind IN ('calendar_entry', 'ticket')
          AND EXISTS (
              SELECT FROM orders.refunds AS refund
              WHERE refund.order_id = claim.order_id
                AND refund.reason_key LIKE 'unconfirmed-bookings:%'
          )
        """
    )


def downgrade() -> None:
    pass
