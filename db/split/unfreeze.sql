-- Lift the freeze of the named moves from legacy tables of one source database: drop their
-- triggers split_freeze_<move> (freeze.sql). A table another move still freezes stays frozen by
-- that move's trigger. The freeze function goes once no trigger uses it.
--
-- `rose split abort` runs it for the aborted moves; `rose split finalize` for the tables it
-- keeps (lookups). Run as a superuser connected to the source database (idempotent; one
-- transaction):
--   psql -1 -d db_market -v owner=market_owner -v moves=likes -v tables=product_likes,products \
--        -f db/split/unfreeze.sql

SET LOCAL lock_timeout = '10s';
-- One freeze or unfreeze at a time per database (see freeze.sql).
SELECT pg_advisory_xact_lock(hashtext('rose split freeze'));
SET LOCAL ROLE :"owner";

SELECT format('DROP TRIGGER IF EXISTS %I ON legacy.%I', 'split_freeze_' || move, source_table)
FROM unnest(string_to_array(:'moves', ',')) AS move,
     unnest(string_to_array(:'tables', ',')) AS source_table
WHERE to_regclass(format('legacy.%I', source_table)) IS NOT NULL \gexec

SELECT 'DROP FUNCTION legacy.split_refuse_write()'
WHERE to_regprocedure('legacy.split_refuse_write()') IS NOT NULL
  AND NOT EXISTS (
      SELECT FROM pg_trigger WHERE tgfoid = to_regprocedure('legacy.split_refuse_write()')
  ) \gexec

RESET ROLE;
