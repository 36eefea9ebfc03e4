-- The roles rose declares on one PostgreSQL server: attributes, settings, memberships.
--
-- How every file of db/schemas and db/fdw works: it only reads the catalogs, and each query
-- returns the statements that make the server equal to the declaration; psql's \gexec runs them.
-- Each statement starts with a comment naming the difference it repairs. A statement-less
-- comment is a difference provisioning leaves to a person (the comment says why). Running a
-- file twice, the second run finds nothing to do and runs nothing but these SELECTs.
--   rose db provision --dry-run   prints the statements (with the comments), runs none
--   rose db check                 prints the comments: one line per difference
--
-- Run by hand as a superuser, connected to any database of the server,
-- from the repository's root (the password in PGPASSWORD or ~/.pgpass). Print the psql
-- command with every value `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/schemas/roles.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- roles: the roles to converge, [{"name", "login", "inherit", "password", "settings"}] (rose
-- passes every role of the services on this server: each service's <svc>_owner and <svc>_app,
-- and the FDW reader roles <provider>_ro_<consumer> of the edges it provides). known: every role
-- rose declares on this server. namespace: the names that are rose's; a role there that rose
-- does not declare is reported (and dropped by db/schemas/prune_roles.sql, `rose db provision
-- --prune`).

-- A missing role is created with its attributes (and password, when one is given).
SELECT format(
    E'-- cluster: missing role %s\nCREATE ROLE %I %s %s NOSUPERUSER NOCREATEDB NOCREATEROLE '
    'NOREPLICATION NOBYPASSRLS%s',
    r.name, r.name,
    CASE WHEN r.login THEN 'LOGIN' ELSE 'NOLOGIN' END,
    CASE WHEN r.inherit THEN 'INHERIT' ELSE 'NOINHERIT' END,
    CASE WHEN r.password IS NULL THEN '' ELSE format(' PASSWORD %L', r.password) END)
FROM jsonb_to_recordset(:'roles'::jsonb) AS r(name text, login boolean, inherit boolean, password text)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r.name)
ORDER BY r.name \gexec

-- Attributes: owners never log in (migrations SET ROLE to them), app and reader roles do; nobody
-- is a superuser, creates databases or roles, replicates or bypasses row security; no
-- connection limit, no expiry.
SELECT format(E'-- cluster: role %s should be %s\nALTER ROLE %I %s',
              r.name, a.wanted, r.name, a.wanted)
FROM jsonb_to_recordset(:'roles'::jsonb) AS r(name text, login boolean, inherit boolean)
JOIN pg_roles AS p ON p.rolname = r.name
CROSS JOIN LATERAL (VALUES
    (p.rolcanlogin <> r.login, CASE WHEN r.login THEN 'LOGIN' ELSE 'NOLOGIN' END),
    (p.rolinherit <> r.inherit, CASE WHEN r.inherit THEN 'INHERIT' ELSE 'NOINHERIT' END),
    (p.rolsuper, 'NOSUPERUSER'),
    (p.rolcreatedb, 'NOCREATEDB'),
    (p.rolcreaterole, 'NOCREATEROLE'),
    (p.rolreplication, 'NOREPLICATION'),
    (p.rolbypassrls, 'NOBYPASSRLS'),
    (p.rolconnlimit <> -1, 'CONNECTION LIMIT -1'),
    (p.rolvaliduntil IS NOT NULL AND p.rolvaliduntil <> 'infinity', 'VALID UNTIL ''infinity''')
) AS a(differs, wanted)
WHERE a.differs
ORDER BY r.name, a.wanted \gexec

-- Settings (ALTER ROLE ... SET): exactly the declared ones, for every database.
WITH declared AS (
    SELECT r.name, s.key AS setting, s.value
    FROM jsonb_to_recordset(:'roles'::jsonb) AS r(name text, settings jsonb),
         jsonb_each_text(r.settings) AS s
), actual AS (
    SELECT p.rolname AS name, split_part(c, '=', 1) AS setting,
           substr(c, strpos(c, '=') + 1) AS value
    FROM pg_db_role_setting AS s
    JOIN pg_roles AS p ON p.oid = s.setrole
    CROSS JOIN unnest(s.setconfig) AS c
    WHERE s.setdatabase = 0
      AND p.rolname IN (SELECT name FROM jsonb_to_recordset(:'roles'::jsonb) AS r(name text))
)
SELECT format(E'-- cluster: role %s setting %s is %s, declared %s\nALTER ROLE %I SET %I = %L',
              d.name, d.setting, coalesce(a.value, 'not set'), d.value,
              d.name, d.setting, d.value)
FROM declared AS d LEFT JOIN actual AS a USING (name, setting)
WHERE a.value IS DISTINCT FROM d.value
UNION ALL
SELECT format(E'-- cluster: role %s has undeclared setting %s = %s\nALTER ROLE %I RESET %I',
              a.name, a.setting, a.value, a.name, a.setting)
FROM actual AS a LEFT JOIN declared AS d USING (name, setting)
WHERE d.setting IS NULL \gexec

-- Settings per database (ALTER ROLE ... IN DATABASE ... SET): none are declared.
SELECT format(E'-- cluster: role %s has undeclared settings in database %s (%s)\n'
              'ALTER ROLE %I IN DATABASE %I RESET ALL',
              p.rolname, d.datname, array_to_string(s.setconfig, ', '), p.rolname, d.datname)
FROM pg_db_role_setting AS s
JOIN pg_roles AS p ON p.oid = s.setrole
JOIN pg_database AS d ON d.oid = s.setdatabase
WHERE p.rolname IN (SELECT name FROM jsonb_to_recordset(:'roles'::jsonb) AS r(name text)) \gexec

-- Memberships: a rose role is a member of no role, and no role is a member of a rose role (a
-- login role granted <svc>_owner could do anything the owner can).
SELECT format(E'-- cluster: extra membership: %s%s is a member of %s\nREVOKE %I FROM %I GRANTED BY %I CASCADE',
              member.rolname, CASE WHEN member.rolcanlogin THEN ' (LOGIN)' ELSE '' END,
              grp.rolname, grp.rolname, member.rolname, grantor.rolname)
FROM pg_auth_members AS m
JOIN pg_roles AS member ON member.oid = m.member
JOIN pg_roles AS grp ON grp.oid = m.roleid
JOIN pg_roles AS grantor ON grantor.oid = m.grantor
WHERE member.rolname IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
   OR grp.rolname IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY member.rolname, grp.rolname \gexec

-- Parameters (GRANT SET / ALTER SYSTEM ON PARAMETER, PostgreSQL 15+): none is declared for a
-- rose role, nor for PUBLIC (which every rose role is). SET on session_replication_role alone
-- switches off every trigger of a session's writes, the foreign keys' included. A rose role's
-- is revoked; PUBLIC's is reported only: the privilege is the server's, shared with whatever
-- else runs there (revoke it by hand if rose's roles must not have it).
SELECT format(E'-- cluster: extra privilege %s on parameter %s for %s\n'
              'REVOKE %s ON PARAMETER %s FROM %I%s CASCADE',
              a.privilege_type, p.parname, r.rolname, a.privilege_type,
              (SELECT string_agg(quote_ident(part), '.')
               FROM unnest(string_to_array(p.parname, '.')) AS part),
              r.rolname,
              CASE WHEN g.rolsuper THEN '' ELSE format(' GRANTED BY %I', g.rolname) END)
FROM pg_parameter_acl AS p
CROSS JOIN LATERAL aclexplode(p.paracl) AS a
JOIN pg_roles AS r ON r.oid = a.grantee
JOIN pg_roles AS g ON g.oid = a.grantor
WHERE r.rolname IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY 1 \gexec

SELECT format(E'-- cluster: every role may %s parameter %s (granted to PUBLIC): not changed (the '
              'server''s, not rose''s; revoke it by hand if rose''s roles must not)',
              a.privilege_type, p.parname)
FROM pg_parameter_acl AS p
CROSS JOIN LATERAL aclexplode(p.paracl) AS a
WHERE a.grantee = 0
ORDER BY 1 \gexec

-- Roles in rose's namespace that rose does not declare: reported, dropped only by --prune.
SELECT format(E'-- cluster: unknown role %s%s in rose''s namespace (rose db provision --prune drops it)',
              p.rolname, CASE WHEN p.rolcanlogin THEN ' (LOGIN)' ELSE '' END)
FROM pg_roles AS p
WHERE p.rolname ~ :'namespace'
  AND p.rolname NOT IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY p.rolname \gexec
