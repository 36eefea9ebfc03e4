-- Move `page_configs`: db_cart legacy.page_configs -> db_blog blog.page_configs
--
-- Runs in db_blog, in the move's one transaction, as blog_owner, after `rose split run` has
-- copied the source table into the temporary table stage_page_configs (legacy columns and types).
-- Parts: setup, `-- split:classify` (temporary tables only; `rose split plan` runs it read-only),
-- `-- split:apply` (writes the target). See relations.sql for the conventions.
--
-- What moves: every row, deleted history included, with its id (orders keep page_config_id),
-- the SumUp API key included: blog owns it now and only the orders FDW edge can read it.
-- Quirk: `features` was json and NULL on old rows; the target wants a jsonb object: NULL moves
-- as {} (noted in the ledger); anything but an object is skipped and listed.

-- split:classify

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'page_configs',
       staged.id,
       CASE
           WHEN existing.id IS NOT NULL THEN 'skipped'
           WHEN json_typeof(staged.features) <> 'object' THEN 'skipped'
           ELSE 'moved'
       END,
       CASE
           WHEN existing.id IS NOT NULL THEN 'already in the target'
           WHEN json_typeof(staged.features) <> 'object'
               THEN 'features is not a JSON object (the target requires one)'
           WHEN staged.features IS NULL THEN 'features was NULL: moved as {}'
       END
FROM stage_page_configs AS staged
LEFT JOIN blog.page_configs AS existing ON existing.id = staged.id;

INSERT INTO split_planned (target_table, planned)
SELECT 'blog.page_configs', count(*)
FROM split_outcome WHERE source_table = 'page_configs' AND outcome = 'moved';

-- split:apply

WITH wanted AS (
    SELECT staged.*
    FROM stage_page_configs AS staged
    JOIN split_outcome AS outcome
      ON outcome.source_table = 'page_configs' AND outcome.source_id = staged.id
    WHERE outcome.outcome = 'moved'
),
inserted AS (
    INSERT INTO blog.page_configs
        (id, container_type, container_id, features, sumup_merchant_code, sumup_api_key,
         sumup_checkout_prefix, created_at, updated_at, deleted_at)
    SELECT id, container_type, container_id, coalesce(features::jsonb, '{}'::jsonb),
           sumup_merchant_code, sumup_api_key, sumup_checkout_prefix,
           created_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC',
           deleted_at AT TIME ZONE 'UTC'
    FROM wanted
    ORDER BY id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'blog.page_configs', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

-- Past the largest id, never backwards (see relations.sql).
SELECT setval(
    pg_get_serial_sequence('blog.page_configs', 'id'),
    greatest(
        max(id) + 1,
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('blog.page_configs', 'id')::regclass) + 1, 1)),
    false)
FROM blog.page_configs
HAVING max(id) IS NOT NULL;
