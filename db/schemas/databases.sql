-- The databases rose declares on one PostgreSQL server, who may connect to them, and what rose's
-- roles may do in the server's other databases (nothing).
--
-- Run by hand as a superuser, connected to the maintenance database (postgres), after roles.sql,
-- from the repository's root (the password in PGPASSWORD or ~/.pgpass). Print the psql
-- command with every value `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/schemas/databases.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- databases: the service databases to converge, [{"name", "owner", "connect"}], each with its
-- owner and the roles that may connect (its app role and the FDW reader roles of the edges it
-- provides). known: every database rose declares on this server. monolith: the login roles the
-- monolith writes its legacy tables as until the split is finalized (ROSE_MONOLITH_ROLES) and
-- what they may hold, {"roles", "databases", "connect", ...} (ops/db/monolith.py). See
-- db/schemas/roles.sql for how these files work.

-- A missing service database. (CREATE DATABASE cannot run inside a transaction: its own statement.)
-- Its locale is PostgreSQL's builtin C.UTF-8 whatever the server's initdb chose: text sorts by
-- code point everywhere (as on libc's C.UTF-8, which the local server used before), an operating
-- system's C library upgrade cannot reorder its indexes, and comparisons skip strcoll.
SELECT format(E'-- cluster: missing database %s\nCREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0 '
              'LOCALE_PROVIDER builtin LOCALE %L',
              d.name, d.name, d.owner, 'UTF8', 'C.UTF-8')
FROM jsonb_to_recordset(:'databases'::jsonb) AS d(name text, owner text)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d.name)
ORDER BY d.name \gexec

SELECT format(E'-- cluster: database %s is owned by %s, not %s\nALTER DATABASE %I OWNER TO %I',
              d.name, pg_get_userbyid(db.datdba), d.owner, d.name, d.owner)
FROM jsonb_to_recordset(:'databases'::jsonb) AS d(name text, owner text)
JOIN pg_database AS db ON db.datname = d.name
WHERE pg_get_userbyid(db.datdba) <> d.owner \gexec

-- Who may connect: the declared roles get CONNECT and nothing else; nobody else gets anything
-- (PUBLIC's default CONNECT and TEMPORARY included). The owner's own privileges are its own.
-- Missing grants first, then revocations, so no declared role is locked out in between.
-- The monolith's declared roles may keep the CONNECT a DBA gave them on the databases holding
-- schema legacy (accepted: never granted, never revoked); anything else of theirs is revoked.
WITH declared AS (
    SELECT d.name AS datname, role_name AS grantee, 'CONNECT' AS privilege
    FROM jsonb_to_recordset(:'databases'::jsonb) AS d(name text, connect jsonb),
         jsonb_array_elements_text(d.connect) AS role_name
), accepted AS (
    SELECT datname, grantee, privilege
    FROM jsonb_array_elements_text(:'monolith'::jsonb -> 'databases') AS datname,
         jsonb_array_elements_text(:'monolith'::jsonb -> 'roles') AS grantee,
         jsonb_array_elements_text(:'monolith'::jsonb -> 'connect') AS privilege
), actual AS (
    SELECT db.datname, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           a.is_grantable, pg_get_userbyid(a.grantor) AS grantor,
           a.grantor = db.datdba AS by_owner
    FROM pg_database AS db
    CROSS JOIN LATERAL aclexplode(coalesce(db.datacl, acldefault('d', db.datdba))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE db.datname IN (SELECT name FROM jsonb_to_recordset(:'databases'::jsonb) AS d(name text))
      AND a.grantee <> db.datdba
), missing_database AS (
    -- A database that does not exist yet will have PUBLIC's defaults: revoke them right away.
    SELECT d.name AS datname, 'PUBLIC' AS grantee, p.privilege
    FROM jsonb_to_recordset(:'databases'::jsonb) AS d(name text)
    CROSS JOIN (VALUES ('CONNECT'), ('TEMPORARY')) AS p(privilege)
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d.name)
)
SELECT format(E'-- cluster: missing privilege %s on database %s for %s\nGRANT %s ON DATABASE %I TO %I',
              d.privilege, d.datname, d.grantee, d.privilege, d.datname, d.grantee)
FROM declared AS d
WHERE NOT EXISTS (
    SELECT FROM actual AS a
    WHERE (a.datname, a.grantee, a.privilege) = (d.datname, d.grantee, d.privilege))
UNION ALL
SELECT format(E'-- cluster: extra grant option for %s on database %s for %s\n'
              'REVOKE GRANT OPTION FOR %s ON DATABASE %I FROM %I%s CASCADE',
              a.privilege, a.datname, a.grantee, a.privilege, a.datname, a.grantee,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
JOIN (SELECT * FROM declared UNION SELECT * FROM accepted) AS d USING (datname, grantee, privilege)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- cluster: extra privilege %s on database %s for %s\nREVOKE %s ON DATABASE %I FROM %s%s CASCADE',
              a.privilege, a.datname, a.grantee, a.privilege, a.datname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
WHERE NOT EXISTS (
    SELECT FROM declared AS d
    WHERE (a.datname, a.grantee, a.privilege) = (d.datname, d.grantee, d.privilege))
  AND NOT EXISTS (
    SELECT FROM accepted AS m
    WHERE (a.datname, a.grantee, a.privilege) = (m.datname, m.grantee, m.privilege))
UNION ALL
SELECT format(E'-- cluster: extra privilege %s on database %s for PUBLIC\nREVOKE %s ON DATABASE %I FROM PUBLIC',
              m.privilege, m.datname, m.privilege, m.datname)
FROM missing_database AS m \gexec

-- A declared monolith role that does not exist: named, never created (the DBA makes it and
-- grants it what the monolith needs).
SELECT format(E'-- cluster: monolith role %s declared in ROSE_MONOLITH_ROLES does not exist: '
              'rose never creates it; create it (and grant it its legacy privileges) or take it '
              'out of the setting', role_name)
FROM jsonb_array_elements_text(:'monolith'::jsonb -> 'roles') AS role_name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name)
ORDER BY 1 \gexec

-- The maintenance and template databases, and any database of rose's namespace (db_*) rose does
-- not declare: no rose role may connect to them or create temporary tables there, neither
-- directly nor through PUBLIC.
SELECT format(E'-- cluster: extra privilege %s on database %s for %s\nREVOKE %s ON DATABASE %I FROM %s%s CASCADE',
              a.privilege_type, db.datname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type,
              db.datname, coalesce(quote_ident(r.rolname), 'PUBLIC'),
              CASE WHEN a.grantor = db.datdba THEN ''
                   ELSE format(' GRANTED BY %I', pg_get_userbyid(a.grantor)) END)
FROM pg_database AS db
CROSS JOIN LATERAL aclexplode(coalesce(db.datacl, acldefault('d', db.datdba))) AS a
LEFT JOIN pg_roles AS r ON r.oid = a.grantee
WHERE (db.datname IN ('postgres', 'template0', 'template1')
       OR (db.datname LIKE 'db\_%' AND db.datname NOT IN (
           SELECT jsonb_array_elements_text(:'known'::jsonb))))
  AND a.grantee <> db.datdba
  AND (a.grantee = 0 OR r.rolname ~ :'namespace')
ORDER BY db.datname \gexec

-- Databases of rose's namespace that rose does not declare: reported, never dropped (they may
-- hold data). Drop one by hand once you know it is not needed.
SELECT format(E'-- cluster: unknown database %s in rose''s namespace (owner %s): not dropped',
              db.datname, pg_get_userbyid(db.datdba))
FROM pg_database AS db
WHERE db.datname LIKE 'db\_%'
  AND db.datname NOT IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY db.datname \gexec

-- Settings of rose's databases (ALTER DATABASE ... SET, and ALTER ROLE ALL IN DATABASE ...
-- SET): none are declared, and each applies to every session there, the services' included
-- (session_replication_role = replica alone switches off every trigger of their writes, the
-- foreign keys' included). Reset. The same for every database of the server (ALTER ROLE ALL
-- SET) is reported only: it is the server's, shared with whatever else runs there.
SELECT format(E'-- cluster: database %s has settings (%s)\nALTER DATABASE %I RESET ALL',
              d.datname, array_to_string(s.setconfig, ', '), d.datname)
FROM pg_db_role_setting AS s
JOIN pg_database AS d ON d.oid = s.setdatabase
WHERE s.setrole = 0
  AND d.datname IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY d.datname \gexec

SELECT format(E'-- cluster: every role has settings in every database (ALTER ROLE ALL SET %s): '
              'not changed (the server''s, not rose''s; reset it by hand if rose''s services '
              'must not run with it)', array_to_string(s.setconfig, ', '))
FROM pg_db_role_setting AS s
WHERE s.setrole = 0 AND s.setdatabase = 0 \gexec
