-- Checksum view of move `relations`, target side (db_relations): every row of the target table.
-- Run it right after the move, before the relations service writes (see relations.cart.sql).

CREATE OR REPLACE TEMP VIEW split_check_container_relations AS
SELECT id AS bucket,
       row(id, parent_type, parent_id, child_type, child_id, sort_order, label,
           created_at, updated_at, deleted_at)::text AS row_text
FROM relations.container_relations;
