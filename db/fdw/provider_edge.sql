-- The provider side of one FDW edge: the reader role the consumer logs in as.
--
-- Run as a superuser on the provider's server, connected to the provider database:
--   psql -d db_likes -v provider=likes -v db=db_likes -v reader=likes_ro_market \
--        -v reader_password='...' -v views=likes -f db/fdw/provider_edge.sql
-- `views` is a comma-separated list of export views of this edge.

-- A login role that can read exactly the edge's export views, and nothing else.
SELECT format('CREATE ROLE %I LOGIN NOINHERIT PASSWORD %L', :'reader', :'reader_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec

-- Read-only even if a grant is added by mistake; and short queries only.
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '10s';

GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA export TO :"reader";

-- SELECT on each export view of the edge. The views run with their owner's rights, so the
-- reader needs (and has) no privilege on the provider's own schema or tables.
SELECT format('GRANT SELECT ON export.%I TO %I', view_name, :'reader')
FROM unnest(string_to_array(:'views', ',')) AS view_name \gexec
