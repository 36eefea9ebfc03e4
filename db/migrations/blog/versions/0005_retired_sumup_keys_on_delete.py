"""retired_sumup_keys: a page config deleted (marked or removed) keeps its merchant's key too

Migration 0004's trigger kept the key a config stopped using only when its merchant or key was
updated. A config deleted while orders of its merchant were open kept nothing: marking it
deleted (deleted_at) changed neither column, and removing the row took its entries with it
(the foreign key cascaded). Those orders could never be settled, closed or refunded again.
Now the trigger also fires on deleted_at and on DELETE, and the entries no longer reference
the config's row (they must outlive it; they go with the pruning, as any other entry). Orders
finds the key by the order's config id and merchant alone (apps/orders/settlement.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The entry outlives its config (a removed config's orders still settle with it).
    op.drop_constraint(
        "fk_retired_sumup_keys_page_config_id_page_configs",
        "retired_sumup_keys",
        type_="foreignkey",
        schema="blog",
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION blog.retire_sumup_key() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            -- The config names this merchant with a key (again, or inserted again with its
            -- id): its own key sees the merchant's checkouts, so an entry kept for it goes.
            IF TG_OP <> 'DELETE' AND NEW.deleted_at IS NULL
               AND NEW.sumup_merchant_code IS NOT NULL AND NEW.sumup_api_key IS NOT NULL THEN
                DELETE FROM blog.retired_sumup_keys
                WHERE page_config_id = NEW.id
                  AND sumup_merchant_code = NEW.sumup_merchant_code;
            END IF;
            -- The merchant it held a key for is no longer the one it names with a key: the
            -- config was deleted (marked or removed), the merchant changed (or was removed),
            -- or the key was removed. A new key of the same merchant (a rotation) keeps
            -- nothing: it sees the old key's checkouts too.
            IF TG_OP <> 'INSERT' AND OLD.deleted_at IS NULL
               AND OLD.sumup_merchant_code IS NOT NULL AND OLD.sumup_api_key IS NOT NULL
               AND (TG_OP = 'DELETE'
                    OR NEW.deleted_at IS NOT NULL
                    OR NEW.sumup_merchant_code IS DISTINCT FROM OLD.sumup_merchant_code
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
    op.execute("DROP TRIGGER page_configs_retire_sumup_key ON blog.page_configs")
    op.execute(
        """
        CREATE TRIGGER page_configs_retire_sumup_key
        AFTER INSERT OR DELETE
           OR UPDATE OF sumup_merchant_code, sumup_api_key, deleted_at ON blog.page_configs
        FOR EACH ROW EXECUTE FUNCTION blog.retire_sumup_key()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER page_configs_retire_sumup_key ON blog.page_configs")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION blog.retire_sumup_key() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF NEW.deleted_at IS NULL AND NEW.sumup_merchant_code IS NOT NULL
               AND NEW.sumup_api_key IS NOT NULL THEN
                DELETE FROM blog.retired_sumup_keys
                WHERE page_config_id = NEW.id
                  AND sumup_merchant_code = NEW.sumup_merchant_code;
            END IF;
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
    # Entries of configs removed meanwhile cannot reference them again.
    op.execute(
        "DELETE FROM blog.retired_sumup_keys AS kept WHERE NOT EXISTS "
        "(SELECT FROM blog.page_configs AS config WHERE config.id = kept.page_config_id)"
    )
    op.create_foreign_key(
        "fk_retired_sumup_keys_page_config_id_page_configs",
        "retired_sumup_keys",
        "page_configs",
        ["page_config_id"],
        ["id"],
        source_schema="blog",
        referent_schema="blog",
        ondelete="CASCADE",
    )
