-- One export view of a provider as a foreign table in the consumer database.
--
-- Run as a superuser, connected to the consumer database, after consumer_edge.sql:
--   psql -d db_market -v provider=likes -v server=likes_server -v view=likes \
--        -v owner=market_owner -v app=market_app -v stale=false -f db/fdw/import_view.sql
-- stale=true re-imports a foreign table whose columns no longer match the provider's view
-- (`rose db check` reports it; `rose db provision` passes stale=true for it).

SELECT format('DROP FOREIGN TABLE IF EXISTS %I.%I', :'provider', :'view')
WHERE :'stale' = 'true' \gexec

-- Imported as the consumer's owner, so the foreign table belongs to it (and its user mapping is
-- used to read the remote catalog).
SET ROLE :"owner";
SELECT format('IMPORT FOREIGN SCHEMA export LIMIT TO (%I) FROM SERVER %I INTO %I',
              :'view', :'server', :'provider')
WHERE NOT EXISTS (
    SELECT FROM pg_foreign_table AS ft
    JOIN pg_class AS c ON c.oid = ft.ftrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = :'provider' AND c.relname = :'view') \gexec
RESET ROLE;

-- The consumer's app reads it; nobody else does.
GRANT SELECT ON :"provider".:"view" TO :"app";
