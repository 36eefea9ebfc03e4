"""retired_sumup_keys: the SumUp key a page config stopped using, kept for orders (late payments,
refunds), written by a trigger in the same transaction as the change; the export view orders reads

Orders asks SumUp about an order's checkouts with the key of the merchant the order was made for
(its snapshot). A page switched to another merchant, or whose key was removed, left such orders
unknown until a person put the old key back. Now the config's old merchant and key are kept here
when the config stops using them, and orders reads them (export.retired_sumup_keys, its edge
only: db/fdw/manifest.toml declares the key a [[secret]]).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One entry per config and merchant: any key of a merchant sees all its checkouts, so the
    # last one the config held is all orders needs.
    op.create_table(
        "retired_sumup_keys",
        sa.Column("page_config_id", sa.BigInteger, nullable=False),
        sa.Column("sumup_merchant_code", sa.String(32), nullable=False),
        sa.Column("sumup_api_key", sa.String(255), nullable=False),
        sa.Column(
            "retired_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["page_config_id"],
            ["blog.page_configs.id"],
            name="fk_retired_sumup_keys_page_config_id_page_configs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "page_config_id", "sumup_merchant_code", name="pk_retired_sumup_keys"
        ),
        schema="blog",
    )
    # The pruning's search (blog deletes entries older than BLOG_RETIRED_SUMUP_KEY_DAYS).
    op.create_index(
        "ix_retired_sumup_keys_retired_at", "retired_sumup_keys", ["retired_at"], schema="blog"
    )

    # Whatever changes a config's merchant or key (blog's update-page-config action, its admin
    # page, a person's UPDATE) goes through this trigger, in its transaction. Not SECURITY
    # DEFINER: it writes as the role that changed the config (blog_app may write blog's tables).
    op.execute(
        """
        CREATE FUNCTION blog.retire_sumup_key() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            -- The config names this merchant with a key (again): its own key sees the
            -- merchant's checkouts, so an entry kept for it goes (a kept secret is a liability).
            IF NEW.deleted_at IS NULL AND NEW.sumup_merchant_code IS NOT NULL
               AND NEW.sumup_api_key IS NOT NULL THEN
                DELETE FROM blog.retired_sumup_keys
                WHERE page_config_id = NEW.id
                  AND sumup_merchant_code = NEW.sumup_merchant_code;
            END IF;
            -- The merchant it held a key for is no longer the one it names with a key: the
            -- merchant changed (or was removed), or the key was removed. A new key of the same
            -- merchant (a rotation) keeps nothing: it sees the old key's checkouts too.
            IF OLD.deleted_at IS NULL AND OLD.sumup_merchant_code IS NOT NULL
               AND OLD.sumup_api_key IS NOT NULL
               AND (NEW.sumup_merchant_code IS DISTINCT FROM OLD.sumup_merchant_code
                    OR NEW.sumup_api_key IS NULL) THEN
                INSERT INTO blog.retired_sumup_keys
                    (page_config_id, sumup_merchant_code, sumup_api_key, retired_at)
                VALUES (OLD.id, OLD.sumup_merchant_code, OLD.sumup_api_key, now())
                ON CONFLICT (page_config_id, sumup_merchant_code)
                DO UPDATE SET sumup_api_key = EXCLUDED.sumup_api_key,
                              retired_at = EXCLUDED.retired_at;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER page_configs_retire_sumup_key
        AFTER UPDATE OF sumup_merchant_code, sumup_api_key ON blog.page_configs
        FOR EACH ROW EXECUTE FUNCTION blog.retire_sumup_key()
        """
    )

    # What orders reads through postgres_fdw, and only orders (db/fdw/manifest.toml).
    op.execute(
        """
        CREATE VIEW export.retired_sumup_keys AS
        SELECT page_config_id, sumup_merchant_code, sumup_api_key, retired_at
        FROM blog.retired_sumup_keys
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.retired_sumup_keys")
    op.execute("DROP TRIGGER IF EXISTS page_configs_retire_sumup_key ON blog.page_configs")
    op.execute("DROP FUNCTION IF EXISTS blog.retire_sumup_key()")
    op.drop_table("retired_sumup_keys", schema="blog")
