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
-- as {}, and so does anything else that is not an object jsonb can hold (an array, a scalar, a
-- string with \u0000), noted in the ledger. Never skipped: orders keep the config's id as their
-- merchant snapshot, and its SumUp key must be in blog for their refunds.

-- split:classify

-- A page (or the site) with more than one active config: the monolith had no unique index, the
-- target allows one, and which SumUp merchant the page's orders pay is a person's decision, not
-- the split's: refused before anything moves, naming them (the same check in orders.sql).
DO $check$
DECLARE
    found text;
BEGIN
    SELECT string_agg(format('%s %s (ids %s)', container_type, container_id, ids), '; '
                      ORDER BY container_type, container_id)
    INTO found
    FROM (
        SELECT container_type, container_id, string_agg(id::text, ', ' ORDER BY id) AS ids
        FROM stage_page_configs
        WHERE deleted_at IS NULL
        GROUP BY container_type, container_id
        HAVING count(*) > 1
    ) AS duplicated;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'db_cart legacy.page_configs has more than one active config of %: the '
            'target allows one per page and one for the site, and which one holds the merchant '
            'its orders pay is for a person to decide. Set deleted_at on all but one in the '
            'monolith (after a run: rose split abort --move page_configs --move orders unfreezes '
            'it first), then plan and run again', found;
    END IF;
END
$check$;

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'page_configs',
       staged.id,
       CASE WHEN existing.id IS NOT NULL THEN 'skipped' ELSE 'moved' END,
       CASE
           WHEN existing.id IS NOT NULL THEN 'already in the target'
           WHEN staged.features IS NULL THEN 'features was NULL: moved as {}'
           WHEN json_typeof(staged.features) <> 'object'
                OR NOT pg_input_is_valid(staged.features::text, 'jsonb')
               THEN 'features was not a JSON object the target can hold: moved as {}'
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
    SELECT id, container_type, container_id,
           CASE WHEN json_typeof(features) = 'object'
                     AND pg_input_is_valid(features::text, 'jsonb')
                THEN features::jsonb ELSE '{}'::jsonb END,
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
