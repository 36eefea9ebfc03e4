-- Drop the legacy tables the split moved, in one source database, and record each drop in
-- split.dropped (dropped.sql) in the same transaction. Tables the split keeps (lookups such as
-- legacy.products) are never named here; `rose split finalize` lifts their freeze instead
-- (unfreeze.sql).
--
-- `rose split finalize` runs this inside its own transaction, after it has taken every table's
-- ACCESS EXCLUSIVE lock (with lock_timeout and bounded retries), re-verified the moves and
-- checked that the rows under the lock are those of the backup. By hand, only after the same
-- checks (single transaction; manifest: one JSON object per table, see split.dropped). As
-- written the command below is a template: its "..." stand for finalize's values, and the
-- file refuses it (the manifest is checked first), dropping nothing:
--   psql -1 -v ON_ERROR_STOP=1 -d db_cart -v owner=cart_owner -v tables=orders,order_items \
--        -v manifest='[{"source_table": "orders", "move": "orders", ...}, ...]' \
--        -f db/split/drop_sources.sql

SET LOCAL lock_timeout = '5s';
SET LOCAL ROLE :"owner";

-- The manifest before any drop: JSON naming every table to drop with each value split.dropped
-- records, or nothing is dropped (the header's template, a partial manifest).
SELECT set_config('split.drop_tables', :'tables', true),
       set_config('split.drop_manifest', :'manifest', true);
DO $check$
DECLARE
    manifest jsonb;
    incomplete text;
BEGIN
    BEGIN
        manifest := current_setting('split.drop_manifest')::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'drop_sources.sql: the manifest is not JSON, so nothing is dropped (the '
            'header''s command is a template: its "..." stand for the values of rose split '
            'finalize, which takes the backups and checks every table under its lock first). '
            'Run rose split finalize; by hand, only after the same checks, give one complete '
            'object per table (source_table, move, dropped_by, rows, checksum, backup_file, '
            'backup_sha256)';
    END;
    SELECT string_agg(wanted, ', ' ORDER BY wanted)
    INTO incomplete
    FROM unnest(string_to_array(current_setting('split.drop_tables'), ',')) AS wanted
    WHERE NOT EXISTS (
        SELECT FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(manifest) = 'array' THEN manifest ELSE '[]' END
        ) AS entry
        WHERE entry->>'source_table' = wanted
          AND entry ?& array['move', 'dropped_by', 'rows', 'checksum', 'backup_file',
                             'backup_sha256']
          AND NOT EXISTS (SELECT FROM jsonb_each(entry) AS pair WHERE pair.value = 'null')
    );
    IF incomplete IS NOT NULL THEN
        RAISE EXCEPTION 'drop_sources.sql: the manifest has no complete object for legacy.% '
            '(source_table, move, dropped_by, rows, checksum, backup_file, backup_sha256), so '
            'nothing is dropped: rose split finalize fills it after its backups and checks',
            incomplete;
    END IF;
END
$check$;

-- One statement for all of them, so foreign keys between them (order_items -> orders) do not
-- matter. No CASCADE: anything else that depends on them (a view someone made) stops the drop.
-- The freeze triggers go with their tables.
SELECT 'DROP TABLE ' || string_agg(format('legacy.%I', source_table), ', ')
FROM unnest(string_to_array(:'tables', ',')) AS source_table
WHERE to_regclass(format('legacy.%I', source_table)) IS NOT NULL
HAVING count(*) > 0 \gexec

INSERT INTO split.dropped
    (source_table, move, dropped_at, dropped_by, rows, checksum, backup_file, backup_sha256)
SELECT source_table, move, clock_timestamp(), dropped_by, rows, checksum, backup_file,
       backup_sha256
FROM jsonb_to_recordset(:'manifest'::jsonb) AS manifest (
    source_table text, move text, dropped_by text, rows bigint, checksum text,
    backup_file text, backup_sha256 text
);

-- The freeze function, once no trigger uses it.
SELECT 'DROP FUNCTION legacy.split_refuse_write()'
WHERE to_regprocedure('legacy.split_refuse_write()') IS NOT NULL
  AND NOT EXISTS (
      SELECT FROM pg_trigger WHERE tgfoid = to_regprocedure('legacy.split_refuse_write()')
  ) \gexec

-- The schema, once empty.
SELECT 'DROP SCHEMA legacy'
WHERE EXISTS (SELECT FROM pg_namespace WHERE nspname = 'legacy')
  AND NOT EXISTS (
      SELECT FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
      WHERE n.nspname = 'legacy'
  )
  AND NOT EXISTS (
      SELECT FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
      WHERE n.nspname = 'legacy'
  ) \gexec

RESET ROLE;
