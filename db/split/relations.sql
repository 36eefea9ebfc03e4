-- Move `relations`: db_cart legacy.container_relations -> db_relations relations.container_relations
--
-- Runs in db_relations, in the move's one transaction, as relations_owner (so the rows' table
-- keeps its owner), after `rose split run` has copied the source table into the temporary table
-- stage_container_relations (the legacy columns and types, unchanged) and created the outcome
-- tables of db/split/outcome.sql.
--
-- Three parts, marked by the comment lines `-- split:classify` and `-- split:apply`:
--   setup    temporary working tables;
--   classify decide every staged row's outcome; writes temporary tables only (`rose split plan`
--            runs it in a read-only transaction);
--   apply    write the target.
--
-- What moves: every row, detached history (deleted_at set) included, with its id, so ids other
-- services stored stay valid. Timestamps were UTC in `timestamp` columns: read AT TIME ZONE 'UTC'.
-- Quirk: the monolith had no unique index, so two concurrent attaches could leave two active rows
-- for one parent/child pair; the target allows one. The earliest stays, the others are collapsed
-- into it (listed in the ledger with their ids).

-- split:classify

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'container_relations',
       ranked.id,
       CASE
           WHEN ranked.in_target THEN 'skipped'
           WHEN ranked.active_rank > 1 THEN 'collapsed'
           ELSE 'moved'
       END,
       CASE
           WHEN ranked.in_target THEN 'already in the target'
           WHEN ranked.active_rank > 1
               THEN 'a second active attachment of the same parent and child (the earliest is kept)'
       END
FROM (
    SELECT staged.id,
           EXISTS (
               SELECT FROM relations.container_relations AS target WHERE target.id = staged.id
           ) AS in_target,
           CASE WHEN staged.deleted_at IS NULL THEN
               row_number() OVER (
                   PARTITION BY staged.parent_type, staged.parent_id, staged.child_type,
                                staged.child_id, staged.deleted_at IS NULL
                   ORDER BY staged.created_at, staged.id
               )
           ELSE 1 END AS active_rank
    FROM stage_container_relations AS staged
) AS ranked;

INSERT INTO split_planned (target_table, planned)
SELECT 'relations.container_relations', count(*)
FROM split_outcome WHERE source_table = 'container_relations' AND outcome = 'moved';

-- split:apply

WITH wanted AS (
    SELECT staged.*
    FROM stage_container_relations AS staged
    JOIN split_outcome AS outcome
      ON outcome.source_table = 'container_relations' AND outcome.source_id = staged.id
    WHERE outcome.outcome = 'moved'
),
inserted AS (
    INSERT INTO relations.container_relations
        (id, parent_type, parent_id, child_type, child_id, sort_order, label,
         created_at, updated_at, deleted_at)
    SELECT id, parent_type, parent_id, child_type, child_id, sort_order, label,
           created_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC',
           deleted_at AT TIME ZONE 'UTC'
    FROM wanted
    ORDER BY id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'relations.container_relations', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

-- Explicit ids leave the identity sequence where it was: move it past the largest id, so the
-- service's next attach gets a new one (never backwards: GREATEST with where it stands).
-- setval is not transactional: a move that rolls back after this leaves a harmless gap.
SELECT setval(
    pg_get_serial_sequence('relations.container_relations', 'id'),
    greatest(
        max(id) + 1,
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('relations.container_relations', 'id')::regclass) + 1, 1)),
    false)
FROM relations.container_relations
HAVING max(id) IS NOT NULL;
