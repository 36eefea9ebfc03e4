-- Remove the change capture of one move from a source database (see capture.sql): its triggers
-- on the legacy tables, its trigger functions and its change table; the schema split_capture
-- goes when nothing is left in it. Idempotent; what was never installed is skipped.
--
-- Run as a superuser connected to the source database (one transaction):
--   psql -1 -d db_cart -v move=orders -v lock_timeout=10s -f db/split/uncapture.sql
-- `rose split cutover` runs it once the move is done, `abort` and `finalize` too.

SELECT set_config('lock_timeout', :'lock_timeout', true);
SELECT pg_advisory_xact_lock(hashtext('rose split freeze'));

SELECT format('DROP TRIGGER %I ON %s', t.tgname, t.tgrelid::regclass)
FROM pg_trigger AS t
WHERE t.tgname IN ('split_capture_' || :'move', 'split_capture_update_' || :'move',
                   'split_capture_truncate_' || :'move') \gexec

SELECT format('DROP FUNCTION split_capture.%I()', p.proname)
FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'split_capture' AND p.proname LIKE :'move' || '\_\_%' \gexec

SELECT format('DROP TABLE split_capture.%I', c.relname)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'split_capture' AND c.relname = :'move' AND c.relkind = 'r' \gexec

-- The schema (and the shared TRUNCATE function) once no move captures here any more.
SELECT 'DROP SCHEMA split_capture CASCADE'
FROM pg_namespace AS n
WHERE n.nspname = 'split_capture'
  AND NOT EXISTS (
      SELECT FROM pg_class AS c WHERE c.relnamespace = n.oid AND c.relkind = 'r'
  ) \gexec
