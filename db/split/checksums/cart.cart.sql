-- Checksum view of move `cart`, source side (db_cart). Conventions in relations.cart.sql.
-- Re-derived from the legacy lines by the rules in db/split/cart.sql: the lines the
-- ledger lists as skipped drop out (except those the target already held: they must match);
-- live lines of one product in one cart (the user's, or an anonymous session's) become the
-- earliest one with the quantities added up (at most 99) and the latest updated_at; removed
-- lines stay as they are (at most 99).

CREATE TEMP TABLE IF NOT EXISTS split_listed (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    outcome      text NOT NULL,
    reason       text NOT NULL
);

CREATE OR REPLACE TEMP VIEW split_check_cart_items AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT c.id::bigint AS bucket,
           row(c.id, c.user_id, nullif(c.session_id, ''), c.product_id, least(c.summed, 99),
               c.market_place_container_id, NULL::bigint,
               c.created_at AT TIME ZONE 'UTC', c.latest AT TIME ZONE 'UTC',
               c.deleted_at AT TIME ZONE 'UTC') AS row_value
    FROM (
        SELECT lines.*,
               CASE WHEN lines.deleted_at IS NULL THEN
                   first_value(lines.id) OVER owner_product END AS keeper_id,
               CASE WHEN lines.deleted_at IS NULL THEN sum(lines.quantity) OVER owner_product
                    ELSE lines.quantity END AS summed,
               CASE WHEN lines.deleted_at IS NULL THEN max(lines.updated_at) OVER owner_product
                    ELSE lines.updated_at END AS latest
        FROM legacy.cart_items AS lines
        WHERE NOT EXISTS (
            SELECT FROM split_listed AS listed
            WHERE listed.source_table = 'cart_items' AND listed.source_id = lines.id
              AND listed.outcome = 'skipped' AND listed.reason <> 'already in the target'
        )
        WINDOW owner_product AS (
            PARTITION BY lines.deleted_at IS NULL, lines.user_id,
                         CASE WHEN lines.user_id IS NULL THEN lines.session_id END, lines.product_id
            ORDER BY lines.created_at, lines.id
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
        )
    ) AS c
    WHERE c.keeper_id IS NULL OR c.keeper_id = c.id
) AS checked;
