-- Checksum view of move `relations`, source side (db_cart). See relations.target.sql.
--
-- `rose split verify` runs this as a superuser in db_cart with fixed session settings
-- (TimeZone UTC, DateStyle 'ISO, YMD', IntervalStyle postgres, extra_float_digits 3), fills
-- split_listed from the ledger (the source rows the move did not move as they were, with their
-- outcome and reason), and compares count, bit_xor and sum of the row hashes of this view with
-- those of the target's view of the same name; when they differ, per-range buckets of `bucket`
-- locate the rows.
--
-- Each view is (bucket bigint, row_text text, row_hash bigint) over a subquery whose row_value
-- is what the target must hold for one row, in the target's column order and types (a literal
-- is cast to its type: a hash needs one). row_hash hashes the values (hash_record_extended,
-- mixed by hashint8extended: no printing); row_text prints them, for ledgers recorded with md5
-- of the text before December 2026 (ops/split/checksum.py). Unused, a column costs nothing.

CREATE TEMP TABLE IF NOT EXISTS split_listed (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    outcome      text NOT NULL,
    reason       text NOT NULL
);

-- Every relation except the collapsed duplicates (and anything else the ledger lists as not
-- moved, except rows the target already held: those must match too).
CREATE OR REPLACE TEMP VIEW split_check_container_relations AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT r.id::bigint AS bucket,
           row(r.id, r.parent_type, r.parent_id, r.child_type, r.child_id, r.sort_order, r.label,
               r.created_at AT TIME ZONE 'UTC', r.updated_at AT TIME ZONE 'UTC',
               r.deleted_at AT TIME ZONE 'UTC') AS row_value
    FROM legacy.container_relations AS r
    WHERE NOT EXISTS (
        SELECT FROM split_listed AS listed
        WHERE listed.source_table = 'container_relations' AND listed.source_id = r.id
          AND listed.outcome <> 'moved' AND listed.reason <> 'already in the target'
    )
) AS checked;
