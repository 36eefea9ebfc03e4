-- Cluster-level objects of one service: its roles and its database.
--
-- Run as a superuser, connected to the maintenance database (postgres), once per service:
--   psql -v svc=likes -v db=db_likes -v owner=likes_owner -v app=likes_app \
--        -v app_password='...' -f db/schemas/service_cluster.sql
-- `rose db provision` runs it with the same variables. Every statement is idempotent: running it
-- again changes nothing.

-- The owner role owns the database, the schemas and every object in them. Nobody logs in as it:
-- migrations run as a superuser (or a migrator role) under SET ROLE <svc>_owner.
SELECT format('CREATE ROLE %I NOLOGIN', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec

-- The app role is what the running service logs in as: DML on its own tables, nothing else.
-- Its password is set when the role is created (rotation: ALTER ROLE ... PASSWORD by hand).
SELECT format('CREATE ROLE %I LOGIN NOINHERIT PASSWORD %L', :'app', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec

-- A runaway query of the app must not hold locks forever.
ALTER ROLE :"app" SET statement_timeout = '30s';
ALTER ROLE :"app" SET idle_in_transaction_session_timeout = '60s';

SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'db', :'owner', 'UTF8')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec

-- Nobody but the service (and the FDW reader roles of its edges, granted in db/fdw) may connect.
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
