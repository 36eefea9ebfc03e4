"""market_places, products, the products export view

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import timestamps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "market_places",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("slug", sa.String(255), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        # The page the market place sells through ("page", blog post id).
        sa.Column("container_type", sa.String(32), nullable=False),
        sa.Column("container_id", sa.BigInteger, nullable=False),
        *timestamps(),
        schema="market",
    )
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("slug", sa.String(255), nullable=False, unique=True),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("image", sa.String(512), nullable=True),
        sa.Column("regular_price", sa.Numeric(10, 2), nullable=False),
        sa.Column("special_price", sa.Numeric(10, 2), nullable=True),
        sa.Column("price_currency", sa.String(3), nullable=False, server_default="EUR"),
        sa.Column(
            "market_place_id",
            sa.BigInteger,
            sa.ForeignKey("market.market_places.id", name="fk_products_market_place_id"),
            nullable=False,
        ),
        *timestamps(),
        sa.CheckConstraint("regular_price >= 0", name="ck_products_regular_price_not_negative"),
        sa.CheckConstraint(
            "special_price IS NULL OR special_price >= 0", name="ck_products_special_price_ok"
        ),
        schema="market",
    )
    op.create_index("ix_products_market_place_id", "products", ["market_place_id"], schema="market")
    # The browse order of product lists: title, then id for a stable page boundary.
    op.create_index(
        "ix_products_listing",
        "products",
        ["title", "id"],
        schema="market",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    # What cart reads through postgres_fdw: live products with the page they sell through.
    op.execute(
        """
        CREATE VIEW export.products AS
        SELECT p.id, p.slug, p.title, p.image, p.regular_price, p.special_price,
               p.price_currency, p.market_place_id, m.slug AS market_place_slug,
               m.container_type, m.container_id
        FROM market.products AS p
        JOIN market.market_places AS m ON m.id = p.market_place_id
        WHERE p.deleted_at IS NULL AND m.deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.products")
    op.drop_table("products", schema="market")
    op.drop_table("market_places", schema="market")
