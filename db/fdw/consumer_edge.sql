-- The consumer side of one FDW edge: foreign server, user mappings, the schema of foreign tables.
--
-- Run as a superuser, connected to the consumer database:
--   psql -d db_market -v provider=likes -v server=likes_server -v host=127.0.0.1 -v port=5432 \
--        -v dbname=db_likes -v reader=likes_ro_market -v reader_password='...' \
--        -v owner=market_owner -v app=market_app -f db/fdw/consumer_edge.sql
-- Then db/fdw/import_view.sql once per view of the edge.

CREATE EXTENSION IF NOT EXISTS postgres_fdw;

-- updatable 'false': the first of three read-only guards (the remote role's SELECT-only grants
-- and its default_transaction_read_only are the other two). fetch_size: fewer round trips for
-- list pages. keep_connections: one remote connection per local session, not per transaction.
-- connect_timeout: an unreachable provider costs seconds, not minutes (queries that read
-- foreign tables also run under a statement timeout).
SELECT format(
    'CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw OPTIONS '
    '(host %L, port %L, dbname %L, updatable %L, fetch_size %L, keep_connections %L, '
    'connect_timeout %L)',
    :'server', :'host', :'port', :'dbname', 'false', '1000', 'on', '2')
WHERE NOT EXISTS (SELECT FROM pg_foreign_server WHERE srvname = :'server') \gexec

-- When the provider moves (another host or port), point the server there.
SELECT format('ALTER SERVER %I OPTIONS (SET host %L, SET port %L, SET dbname %L)',
              :'server', :'host', :'port', :'dbname')
FROM pg_foreign_server
WHERE srvname = :'server'
  AND NOT srvoptions @> ARRAY['host=' || :'host', 'port=' || :'port', 'dbname=' || :'dbname'] \gexec

-- Only the consumer's owner may use the server (it imports the foreign tables). The app role
-- needs no USAGE: it only reads the foreign tables it is granted.
GRANT USAGE ON FOREIGN SERVER :"server" TO :"owner";

-- Both the owner (import, migrations) and the app (queries) log in remotely as the reader role,
-- always with an explicit user and a password (never password_required 'false').
SELECT format('CREATE USER MAPPING FOR %I SERVER %I OPTIONS (user %L, password %L)',
              role_name, :'server', :'reader', :'reader_password')
FROM unnest(ARRAY[:'owner', :'app']) AS role_name
WHERE NOT EXISTS (
    SELECT FROM pg_user_mappings WHERE srvname = :'server' AND usename = role_name) \gexec

SELECT format('ALTER USER MAPPING FOR %I SERVER %I OPTIONS (SET user %L, SET password %L)',
              m.usename, :'server', :'reader', :'reader_password')
FROM pg_user_mappings AS m
WHERE m.srvname = :'server'
  AND m.usename IN (:'owner', :'app')
  AND NOT m.umoptions @> ARRAY['user=' || :'reader', 'password=' || :'reader_password'] \gexec

-- The provider's views appear in a schema named after the provider, owned by the consumer.
CREATE SCHEMA IF NOT EXISTS :"provider" AUTHORIZATION :"owner";
GRANT USAGE ON SCHEMA :"provider" TO :"app";
