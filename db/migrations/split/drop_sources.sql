-- Drop the legacy tables the split read, in one source database, once every move is verified.
-- Tables no move reads stay (legacy.cart_items); so does schema legacy while it holds anything.
--
-- Run as a superuser connected to the source database (idempotent):
--   psql -d db_cart -v owner=cart_owner \
--        -v tables=container_relations,page_configs,orders,order_items \
--        -f db/migrations/split/drop_sources.sql
-- `rose split finalize` runs it after checking the ledgers.

SET ROLE :"owner";

-- One statement for all of them, so foreign keys between them (order_items -> orders) do not
-- matter. No CASCADE: anything else that depends on them (a view someone made) stops the drop.
-- The freeze triggers go with their tables.
SELECT 'DROP TABLE ' || string_agg(format('legacy.%I', source_table), ', ')
FROM unnest(string_to_array(:'tables', ',')) AS source_table
WHERE to_regclass(format('legacy.%I', source_table)) IS NOT NULL
HAVING count(*) > 0 \gexec

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
