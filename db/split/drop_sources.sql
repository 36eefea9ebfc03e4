-- Drop the legacy tables the split moved, in one source database, and record each drop in
-- split.dropped (dropped.sql) in the same transaction. Tables the split keeps (lookups such as
-- legacy.products) are never named here; `rose split finalize` lifts their freeze instead
-- (unfreeze.sql).
--
-- `rose split finalize` runs this inside its own transaction, after it has taken every table's
-- ACCESS EXCLUSIVE lock (with lock_timeout and bounded retries), re-verified the moves and
-- checked that the rows under the lock are those of the backup. By hand, only after the same
-- checks (single transaction; manifest: one JSON object per table, see split.dropped):
--   psql -1 -d db_cart -v owner=cart_owner -v tables=orders,order_items \
--        -v manifest='[{"source_table": "orders", "move": "orders", ...}, ...]' \
--        -f db/split/drop_sources.sql

SET LOCAL lock_timeout = '5s';
SET LOCAL ROLE :"owner";

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
