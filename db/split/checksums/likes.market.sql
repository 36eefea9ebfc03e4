-- Checksum view of move `likes`, source side, product likes (db_market). Conventions in
-- relations.cart.sql. Derived from the legacy rows here, not from the ledger: one row per user
-- and product that still exists (orphans drop out of the join), collapsed as the move does:
-- active if any duplicate is, the earliest created_at, the latest updated_at, and the latest
-- deleted_at when every duplicate was unliked. Buckets are user ids (the new ids are new).

CREATE OR REPLACE TEMP VIEW split_check_likes AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT l.user_id::bigint AS bucket,
           row(l.user_id, 'product'::text, p.slug, NULL::bigint,
               min(l.created_at) AT TIME ZONE 'UTC',
               max(l.updated_at) AT TIME ZONE 'UTC',
               CASE WHEN bool_or(l.deleted_at IS NULL) THEN NULL
                    ELSE max(l.deleted_at) AT TIME ZONE 'UTC' END) AS row_value
    FROM legacy.product_likes AS l
    JOIN legacy.products AS p ON p.id = l.product_id
    GROUP BY l.user_id, p.slug
) AS checked;
