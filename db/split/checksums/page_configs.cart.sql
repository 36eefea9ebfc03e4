-- Checksum view of move `page_configs`, source side (db_cart). Conventions in relations.cart.sql.
-- Every config the ledger does not list as skipped, features that are not a jsonb object (NULL
-- included) as {}, the API key included.

CREATE TEMP TABLE IF NOT EXISTS split_listed (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    outcome      text NOT NULL,
    reason       text NOT NULL
);

CREATE OR REPLACE TEMP VIEW split_check_page_configs AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT c.id::bigint AS bucket,
           row(c.id, c.container_type, c.container_id,
               CASE WHEN json_typeof(c.features) = 'object'
                         AND pg_input_is_valid(c.features::text, 'jsonb')
                    THEN c.features::jsonb ELSE '{}'::jsonb END,
               c.sumup_merchant_code, c.sumup_api_key, c.sumup_checkout_prefix,
               c.created_at AT TIME ZONE 'UTC', c.updated_at AT TIME ZONE 'UTC',
               c.deleted_at AT TIME ZONE 'UTC') AS row_value
    FROM legacy.page_configs AS c
    WHERE NOT EXISTS (
        SELECT FROM split_listed AS listed
        WHERE listed.source_table = 'page_configs' AND listed.source_id = c.id
          AND listed.outcome <> 'moved' AND listed.reason <> 'already in the target'
    )
) AS checked;
