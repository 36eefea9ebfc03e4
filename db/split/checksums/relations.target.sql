-- Checksum view of move `relations`, target side (db_relations): every row of the target table.
-- Run it right after the move, before the relations service writes (see relations.cart.sql).

CREATE OR REPLACE TEMP VIEW split_check_container_relations AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT id AS bucket,
           row(id, parent_type, parent_id, child_type, child_id, sort_order, label,
               created_at, updated_at, deleted_at) AS row_value
    FROM relations.container_relations
) AS checked;
