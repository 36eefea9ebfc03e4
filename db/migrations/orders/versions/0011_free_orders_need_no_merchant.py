"""An order with nothing to pay needs no merchant: ``ck_orders_free_or_has_merchant``

An order whose every line is free is paid as it is made, without SumUp: it never has a payment
attempt or a refund, so nothing ever reads its page config, merchant code or checkout prefix.
Requiring them (NOT NULL since orders 0001) made a site with no SumUp merchant at all (one that
only gives free places) unable to confirm any free booking. They may now be NULL, but only for an
order whose total is 0: anything to pay is paid through the merchant its order names (its
checkouts, the webhook's and reconciliation's reads, refunds), and the database keeps refusing
an order with something to pay that names none, whichever code path would write one. (Existing
rows all have the three: the upgrade changes no row.)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLUMNS = ("page_config_id", "merchant_code", "checkout_prefix")


def upgrade() -> None:
    for name in COLUMNS:
        op.alter_column("orders", name, nullable=True, schema="orders")
    op.create_check_constraint(
        op.f("ck_orders_free_or_has_merchant"),
        "orders",
        "total = 0 OR (" + " AND ".join(f"{name} IS NOT NULL" for name in COLUMNS) + ")",
        schema="orders",
    )


def downgrade() -> None:
    # A free order made without a merchant has none to give back: refuse rather than invent one.
    op.execute(
        """
        DO $$
        DECLARE
            without integer;
        BEGIN
            SELECT count(*) INTO without FROM orders.orders
            WHERE page_config_id IS NULL OR merchant_code IS NULL OR checkout_prefix IS NULL;
            IF without > 0 THEN
                RAISE EXCEPTION 'orders 0011 cannot be undone: % free orders have no merchant '
                    '(the revision before requires one)', without;
            END IF;
        END
        $$
        """
    )
    op.drop_constraint(op.f("ck_orders_free_or_has_merchant"), "orders", schema="orders")
    for name in COLUMNS:
        op.alter_column("orders", name, nullable=False, schema="orders")
