-- Objects inside one service database: schemas, and the privileges of the app role.
--
-- Run as a superuser, connected to db_<svc>, after service_cluster.sql:
--   psql -d db_likes -v svc=likes -v owner=likes_owner -v app=likes_app \
--        -f db/schemas/service_database.sql
-- Tables and views themselves come from the service's Alembic migrations, run as <svc>_owner, so
-- the default privileges below apply to them.

-- The service's own tables.
CREATE SCHEMA IF NOT EXISTS :"svc" AUTHORIZATION :"owner";
-- The views other services may read through postgres_fdw; grants there are per FDW edge.
CREATE SCHEMA IF NOT EXISTS export AUTHORIZATION :"owner";

-- The app role reads and writes the service's own tables, and nothing of the export schema
-- beyond what it can already read in its own schema.
GRANT USAGE ON SCHEMA :"svc" TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"svc"
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"svc"
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";

-- Objects created by the owner are private unless granted: nothing reaches PUBLIC.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
