-- Inside one service database: its schemas, default privileges, and who may use its own tables.
--
-- Run by hand as a superuser, connected to db_<svc>, after roles.sql and databases.sql,
-- from the repository's root (the password in PGPASSWORD or ~/.pgpass). Print the psql
-- command with every value `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/schemas/service_database.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- svc, owner, app: the service and its roles (likes, likes_owner, likes_app).
-- providers: the services whose export views this database reads through FDW (their schemas here
-- hold foreign tables; db/fdw/consumer_edges.sql converges them). The export schema's grants are
-- db/fdw/export_grants.sql's. Tables and views themselves come from the service's Alembic
-- migrations, run as <svc>_owner, so the default privileges below apply to them.
-- See db/schemas/roles.sql for how these files work.

-- The service's own tables live in schema <svc>; the views other services may read in `export`.
SELECT format(E'-- %s: missing schema %s\nCREATE SCHEMA %I AUTHORIZATION %I',
              current_database(), s.name, s.name, :'owner')
FROM (VALUES (:'svc'), ('export')) AS s(name)
WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = s.name) \gexec

-- Everything is owned by <svc>_owner (the split's ledger schema too, when `rose split` made one);
-- `public` stays PostgreSQL's (pg_database_owner).
SELECT format(E'-- %s: schema %s is owned by %s, not %s\nALTER SCHEMA %I OWNER TO %I',
              current_database(), n.nspname, pg_get_userbyid(n.nspowner), s.owner,
              n.nspname, s.owner)
FROM (VALUES (:'svc', :'owner'), ('export', :'owner'), ('split', :'owner'),
             ('public', 'pg_database_owner')) AS s(name, owner)
JOIN pg_namespace AS n ON n.nspname = s.name
WHERE pg_get_userbyid(n.nspowner) <> s.owner \gexec

-- `legacy` and `split_capture` (the online split's change tables) belong to `rose split`, which
-- reports what it leaves behind itself (`rose db check`: a capture of a move not syncing).
SELECT format(E'-- %s: unexpected schema %s (owner %s): not dropped', current_database(),
              n.nspname, pg_get_userbyid(n.nspowner))
FROM pg_namespace AS n
WHERE n.nspname NOT IN (:'svc', 'export', 'public', 'split', 'legacy', 'split_capture',
                        'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
  AND n.nspname NOT IN (SELECT jsonb_array_elements_text(:'providers'::jsonb))
ORDER BY n.nspname \gexec

-- Schema privileges: the app role uses its own schema; PUBLIC keeps only USAGE on `public`
-- (postgres_fdw's functions live there); the split's ledger and the monolith's tables (`legacy`:
-- every merchant's SumUp key, every order) are their owner's alone. `rose split` reads and
-- writes legacy as a superuser or its owner, and grants nothing there. The monolith's own
-- login roles, declared (ROSE_MONOLITH_ROLES, ops/db/monolith.py: the variable monolith), may
-- keep USAGE on legacy, and below DML on its tables and USAGE/SELECT on its sequences, in the
-- databases that hold it: accepted, never granted (the DBA grants them), never revoked.
-- Missing grants first, then revocations (here and below).
WITH declared(nspname, grantee, privilege) AS (
    VALUES (:'svc', :'app', 'USAGE'), ('public', 'PUBLIC', 'USAGE')
), accepted(nspname, grantee, privilege) AS (
    SELECT :'monolith'::jsonb->>'schema', role, privilege
    FROM jsonb_array_elements_text(:'monolith'::jsonb->'roles') AS role
    CROSS JOIN jsonb_array_elements_text(:'monolith'::jsonb->'schema_privileges') AS privilege
    WHERE current_database() IN (SELECT jsonb_array_elements_text(:'monolith'::jsonb->'databases'))
), actual AS (
    SELECT n.nspname, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           a.is_grantable, pg_get_userbyid(a.grantor) AS grantor, a.grantor = n.nspowner AS by_owner
    FROM pg_namespace AS n
    CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE n.nspname IN (:'svc', 'public', 'split', 'legacy') AND a.grantee <> n.nspowner
)
SELECT format(E'-- %s: missing privilege %s on schema %s for %s\nGRANT %s ON SCHEMA %I TO %s',
              current_database(), d.privilege, d.nspname, d.grantee, d.privilege, d.nspname,
              CASE WHEN d.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(d.grantee) END)
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM actual AS a
                  WHERE (a.nspname, a.grantee, a.privilege) = (d.nspname, d.grantee, d.privilege))
UNION ALL
SELECT format(E'-- %s: extra grant option for %s on schema %s for %s\n'
              'REVOKE GRANT OPTION FOR %s ON SCHEMA %I FROM %s%s CASCADE',
              current_database(), a.privilege, a.nspname, a.grantee, a.privilege, a.nspname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
JOIN (SELECT * FROM declared UNION ALL SELECT * FROM accepted) AS d USING (nspname, grantee, privilege)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- %s: extra privilege %s on schema %s for %s\nREVOKE %s ON SCHEMA %I FROM %s%s CASCADE',
              current_database(), a.privilege, a.nspname, a.grantee, a.privilege, a.nspname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
WHERE NOT EXISTS (SELECT FROM declared AS d
                  WHERE (a.nspname, a.grantee, a.privilege) = (d.nspname, d.grantee, d.privilege))
  AND NOT EXISTS (SELECT FROM accepted AS d
                  WHERE (a.nspname, a.grantee, a.privilege) = (d.nspname, d.grantee, d.privilege)) \gexec

-- Default privileges: what the owner creates in its schema (tables, views and sequences, by its
-- migrations) is the app role's to use (Alembic's version table too, at first: the migration
-- environment, ops/db/migrate.py, takes it back); nothing the owner creates is executable by PUBLIC.
-- No other default privilege exists in this database.
WITH entry AS (
    SELECT pg_get_userbyid(d.defaclrole) AS role_name, d.defaclrole AS role_oid,
           coalesce(n.nspname, '') AS schema_name, d.defaclobjtype::text AS objtype,
           d.defaclacl AS acl
    FROM pg_default_acl AS d
    LEFT JOIN pg_namespace AS n ON n.oid = d.defaclnamespace
    UNION ALL
    -- Without an entry of its own, the owner's new functions get PostgreSQL's defaults.
    SELECT r.rolname, r.oid, '', 'f', acldefault('f', r.oid)
    FROM pg_roles AS r
    WHERE r.rolname = :'owner'
      AND NOT EXISTS (SELECT FROM pg_default_acl AS d
                      WHERE d.defaclrole = r.oid AND d.defaclnamespace = 0
                        AND d.defaclobjtype = 'f')
), actual AS (
    SELECT e.role_name, e.schema_name, e.objtype, coalesce(g.rolname, 'PUBLIC') AS grantee,
           a.privilege_type AS privilege
    FROM entry AS e
    CROSS JOIN LATERAL aclexplode(e.acl) AS a
    LEFT JOIN pg_roles AS g ON g.oid = a.grantee
    WHERE a.grantee <> e.role_oid
), declared(role_name, schema_name, objtype, grantee, privilege) AS (
    SELECT :'owner', :'svc', 'r', :'app', p
    FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p
    UNION ALL
    SELECT :'owner', :'svc', 'S', :'app', p FROM unnest(ARRAY['USAGE', 'SELECT']) AS p
), builtin(objtype, grantee, privilege) AS (
    -- PostgreSQL's own defaults for every role's new objects, which may stay (the owner's
    -- functions excepted, above).
    VALUES ('f', 'PUBLIC', 'EXECUTE'), ('T', 'PUBLIC', 'USAGE')
), kinds(objtype, plural) AS (
    VALUES ('r', 'TABLES'), ('S', 'SEQUENCES'), ('f', 'FUNCTIONS'), ('T', 'TYPES'),
           ('n', 'SCHEMAS'), ('L', 'LARGE OBJECTS')
)
SELECT format(E'-- %s: missing default privilege %s on new %s of %s in schema %s for %s\n'
              'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT %s ON %s TO %I',
              current_database(), d.privilege, lower(k.plural), d.role_name, d.schema_name,
              d.grantee, d.role_name, d.schema_name, d.privilege, k.plural, d.grantee)
FROM declared AS d JOIN kinds AS k USING (objtype)
WHERE NOT EXISTS (
    SELECT FROM actual AS a
    WHERE (a.role_name, a.schema_name, a.objtype, a.grantee, a.privilege)
        = (d.role_name, d.schema_name, d.objtype, d.grantee, d.privilege))
UNION ALL
SELECT format(E'-- %s: extra default privilege %s on new %s of %s%s for %s\n'
              'ALTER DEFAULT PRIVILEGES FOR ROLE %I%s REVOKE %s ON %s FROM %s',
              current_database(), a.privilege, lower(k.plural), a.role_name,
              CASE WHEN a.schema_name = '' THEN '' ELSE ' in schema ' || a.schema_name END,
              a.grantee, a.role_name,
              CASE WHEN a.schema_name = '' THEN '' ELSE format(' IN SCHEMA %I', a.schema_name) END,
              a.privilege, k.plural,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END)
FROM actual AS a JOIN kinds AS k USING (objtype)
WHERE NOT EXISTS (
        SELECT FROM declared AS d
        WHERE (a.role_name, a.schema_name, a.objtype, a.grantee, a.privilege)
            = (d.role_name, d.schema_name, d.objtype, d.grantee, d.privilege))
  AND NOT (a.schema_name = ''
           AND (a.objtype, a.grantee, a.privilege) IN (SELECT * FROM builtin)
           AND NOT (a.role_name = :'owner' AND a.objtype = 'f')) \gexec

-- Tables, views and sequences outside `export` and the FDW schemas: owned by <svc>_owner. (A
-- sequence that belongs to a table's column follows its table.)
SELECT format(E'-- %s: %s %I.%I is owned by %s, not %s\nALTER %s %I.%I OWNER TO %I',
              current_database(), k.kind_name, n.nspname, c.relname,
              pg_get_userbyid(c.relowner), :'owner', k.keyword, n.nspname, c.relname, :'owner')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN (VALUES ('r', 'table', 'TABLE'), ('p', 'table', 'TABLE'), ('v', 'view', 'VIEW'),
             ('m', 'materialized view', 'MATERIALIZED VIEW'), ('S', 'sequence', 'SEQUENCE'))
     AS k(relkind, kind_name, keyword) ON k.relkind = c.relkind::text
WHERE n.nspname IN (:'svc', 'split')
  AND pg_get_userbyid(c.relowner) <> :'owner'
  AND NOT EXISTS (SELECT FROM pg_depend AS dep
                  WHERE dep.classid = 'pg_class'::regclass AND dep.objid = c.oid
                    AND dep.refclassid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i'))
ORDER BY 1 \gexec

-- Privileges on them: the app role may read and write the tables of its own schema and use its
-- sequences (no TRUNCATE, REFERENCES, TRIGGER or MAINTAIN; no grant options), except Alembic's
-- <svc>.alembic_version, which is the migrations' alone (the service never reads it; a runtime
-- role that could write it could make a migration be skipped or run twice); nobody else may do
-- anything, here or in any other schema rose manages (the split's ledger, `public`, the
-- monolith's `legacy`: only its tables' existence is `rose split`'s business).
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl,
           k.kind_name, k.grant_keyword
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    JOIN (VALUES ('r', 'table', 'TABLE'), ('p', 'table', 'TABLE'), ('v', 'view', 'TABLE'),
                 ('m', 'materialized view', 'TABLE'), ('S', 'sequence', 'SEQUENCE'))
         AS k(relkind, kind_name, grant_keyword) ON k.relkind = c.relkind::text
    WHERE n.nspname NOT IN ('export', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_%'
      AND n.nspname NOT IN (SELECT jsonb_array_elements_text(:'providers'::jsonb))
), declared AS (
    SELECT rel.oid, :'app' AS grantee, p AS privilege
    FROM rel
    CROSS JOIN LATERAL unnest(CASE WHEN rel.relkind = 'S' THEN ARRAY['USAGE', 'SELECT']
                              ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END) AS p
    WHERE rel.nspname = :'svc' AND rel.relname <> 'alembic_version'
), accepted AS (
    -- The declared monolith roles' DML on legacy's tables, USAGE/SELECT on its sequences.
    SELECT rel.oid, role AS grantee, p AS privilege
    FROM rel
    CROSS JOIN jsonb_array_elements_text(:'monolith'::jsonb->'roles') AS role
    CROSS JOIN LATERAL jsonb_array_elements_text(:'monolith'::jsonb->(
        CASE WHEN rel.relkind = 'S' THEN 'sequence_privileges' ELSE 'table_privileges' END)) AS p
    WHERE rel.nspname = :'monolith'::jsonb->>'schema' AND rel.relkind IN ('r', 'p', 'S')
      AND current_database() IN (SELECT jsonb_array_elements_text(:'monolith'::jsonb->'databases'))
), actual AS (
    SELECT rel.oid, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           a.is_grantable, pg_get_userbyid(a.grantor) AS grantor, a.grantor = rel.relowner AS by_owner
    FROM rel
    CROSS JOIN LATERAL aclexplode(coalesce(rel.relacl, acldefault(
        CASE WHEN rel.relkind = 'S' THEN 's' ELSE 'r' END::"char", rel.relowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE a.grantee <> rel.relowner
)
SELECT format(E'-- %s: missing privilege %s on %s %I.%I for %s\nGRANT %s ON %s %I.%I TO %I',
              current_database(), d.privilege, rel.kind_name, rel.nspname, rel.relname,
              d.grantee, d.privilege, rel.grant_keyword, rel.nspname, rel.relname, d.grantee)
FROM declared AS d JOIN rel USING (oid)
WHERE NOT EXISTS (SELECT FROM actual AS a
                  WHERE (a.oid, a.grantee, a.privilege) = (d.oid, d.grantee, d.privilege))
UNION ALL
SELECT format(E'-- %s: extra grant option for %s on %s %I.%I for %s\n'
              'REVOKE GRANT OPTION FOR %s ON %s %I.%I FROM %I%s CASCADE',
              current_database(), a.privilege, rel.kind_name, rel.nspname, rel.relname,
              a.grantee, a.privilege, rel.grant_keyword, rel.nspname, rel.relname, a.grantee,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
JOIN (SELECT * FROM declared UNION ALL SELECT * FROM accepted) AS d USING (oid, grantee, privilege)
JOIN rel USING (oid)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- %s: extra privilege %s on %s %I.%I for %s\nREVOKE %s ON %s %I.%I FROM %s%s CASCADE',
              current_database(), a.privilege, rel.kind_name, rel.nspname, rel.relname,
              a.grantee, a.privilege, rel.grant_keyword, rel.nspname, rel.relname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN rel USING (oid)
WHERE NOT EXISTS (SELECT FROM declared AS d
                  WHERE (a.oid, a.grantee, a.privilege) = (d.oid, d.grantee, d.privilege))
  AND NOT EXISTS (SELECT FROM accepted AS d
                  WHERE (a.oid, a.grantee, a.privilege) = (d.oid, d.grantee, d.privilege))
UNION ALL
-- Column privileges: none are declared here.
SELECT format(E'-- %s: extra privilege %s on column %s of %s %I.%I for %s\n'
              'REVOKE %s (%I) ON %s %I.%I FROM %s%s CASCADE',
              current_database(), x.privilege_type, att.attname, rel.kind_name, rel.nspname,
              rel.relname, coalesce(r.rolname, 'PUBLIC'), x.privilege_type, att.attname,
              rel.grant_keyword, rel.nspname, rel.relname,
              coalesce(quote_ident(r.rolname), 'PUBLIC'),
              CASE WHEN x.grantor = rel.relowner THEN ''
                   ELSE format(' GRANTED BY %I', pg_get_userbyid(x.grantor)) END)
FROM rel
JOIN pg_attribute AS att ON att.attrelid = rel.oid AND att.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(att.attacl) AS x
LEFT JOIN pg_roles AS r ON r.oid = x.grantee
WHERE x.grantee <> rel.relowner \gexec

-- Row-level security and triggers decide what a role reads or may write as much as its grants
-- do, and db/ declares none of the first and no disabled trigger: a policy USING (false) empties
-- a table for the app, a permissive one or a disabled foreign-key trigger lets rows through.
-- Like an extra grant, each is repaired: the policy dropped (its line keeps its definition), the
-- table's row-level security switched off, the trigger enabled again. Rows written while a
-- foreign key's trigger was off are not checked again: the line says so.
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
           CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          ELSE 'table' END AS kind_name
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm')
      AND n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\_%'
)
SELECT format(E'-- %s: unexpected policy %s on %s %I.%I (%s FOR %s TO %s%s%s)\n'
              'DROP POLICY %I ON %I.%I',
              current_database(), p.policyname, rel.kind_name, rel.nspname, rel.relname,
              p.permissive, p.cmd, array_to_string(p.roles, ', '),
              coalesce(' USING (' || p.qual || ')', ''),
              coalesce(' WITH CHECK (' || p.with_check || ')', ''),
              p.policyname, rel.nspname, rel.relname)
FROM rel
JOIN pg_policies AS p ON (p.schemaname, p.tablename) = (rel.nspname, rel.relname)
UNION ALL
SELECT format(E'-- %s: row-level security is enabled on %s %I.%I\n'
              'ALTER TABLE %I.%I DISABLE ROW LEVEL SECURITY',
              current_database(), rel.kind_name, rel.nspname, rel.relname, rel.nspname, rel.relname)
FROM rel
WHERE rel.relrowsecurity
UNION ALL
SELECT format(E'-- %s: row-level security is forced on %s %I.%I\n'
              'ALTER TABLE %I.%I NO FORCE ROW LEVEL SECURITY',
              current_database(), rel.kind_name, rel.nspname, rel.relname, rel.nspname, rel.relname)
FROM rel
WHERE rel.relforcerowsecurity
UNION ALL
SELECT format(E'-- %s: trigger %s on %s %I.%I is %s%s\nALTER TABLE %I.%I ENABLE TRIGGER %I',
              current_database(), t.tgname, rel.kind_name, rel.nspname, rel.relname,
              CASE t.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'enabled for replicas only'
                               ELSE 'enabled always (replicas too)' END,
              CASE WHEN t.tgconstraint <> 0 AND t.tgenabled = 'D'
                   THEN format(' (constraint %s: rows written meanwhile are not checked again)',
                               (SELECT conname FROM pg_constraint WHERE oid = t.tgconstraint))
                   ELSE '' END,
              rel.nspname, rel.relname, t.tgname)
FROM rel
JOIN pg_trigger AS t ON t.tgrelid = rel.oid
WHERE t.tgenabled <> 'O'
ORDER BY 1 \gexec

-- Relations in `public` or any unexpected schema: reported (their privileges were revoked
-- above), never dropped (they may hold data).
SELECT format(E'-- %s: unexpected %s %I.%I (owner %s): not dropped', current_database(),
              CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                             WHEN 'S' THEN 'sequence' ELSE 'table' END,
              n.nspname, c.relname, pg_get_userbyid(c.relowner))
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
  AND n.nspname NOT IN (:'svc', 'split', 'export', 'legacy', 'split_capture',
                        'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
  AND n.nspname NOT IN (SELECT jsonb_array_elements_text(:'providers'::jsonb))
ORDER BY 1 \gexec

-- Functions and procedures in the schemas rose manages (`public` too, which every role may
-- use; `legacy`, where the split's freeze keeps its trigger function): nobody but their owner may execute them. PostgreSQL gives PUBLIC EXECUTE on every new
-- one; the owner's get none (the default privileges above), but one a superuser made, or gave
-- to the owner, keeps it, and a SECURITY DEFINER one runs with its owner's rights for whoever
-- may call it (a reader's read-only default is the reader's own to switch off: its grants are
-- the guarantee). Those in `export` and `public`, the schemas the FDW readers may use, are
-- reported too, never dropped: a person decides. (An extension's own functions are the
-- extension's: see the extensions below.)
WITH routine AS (
    SELECT p.oid, n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) AS args,
           p.proowner, p.proacl, p.prosecdef,
           CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                          ELSE 'function' END AS kind_name
    FROM pg_proc AS p
    JOIN pg_namespace AS n ON n.oid = p.pronamespace
    WHERE n.nspname IN (:'svc', 'export', 'split', 'public', 'legacy')
      AND NOT EXISTS (SELECT FROM pg_depend AS dep
                      WHERE dep.classid = 'pg_proc'::regclass AND dep.objid = p.oid
                        AND dep.deptype = 'e')
)
SELECT format(E'-- %s: extra privilege EXECUTE on %s %I.%I(%s) for %s\n'
              'REVOKE EXECUTE ON ROUTINE %I.%I(%s) FROM %s%s CASCADE',
              current_database(), r.kind_name, r.nspname, r.proname, r.args,
              coalesce(g.rolname, 'PUBLIC'), r.nspname, r.proname, r.args,
              coalesce(quote_ident(g.rolname), 'PUBLIC'),
              CASE WHEN a.grantor = r.proowner THEN ''
                   ELSE format(' GRANTED BY %I', pg_get_userbyid(a.grantor)) END)
FROM routine AS r
CROSS JOIN LATERAL aclexplode(coalesce(r.proacl, acldefault('f', r.proowner))) AS a
LEFT JOIN pg_roles AS g ON g.oid = a.grantee
WHERE a.grantee <> r.proowner
UNION ALL
SELECT format(E'-- %s: %s %I.%I(%s) is SECURITY DEFINER (it runs as %s for whoever may call '
              'it) in a schema the FDW readers use: not changed',
              current_database(), r.kind_name, r.nspname, r.proname, r.args,
              pg_get_userbyid(r.proowner))
FROM routine AS r
WHERE r.nspname IN ('export', 'public') AND r.prosecdef
ORDER BY 1 \gexec

-- Extensions: PL/pgSQL (PostgreSQL's own) and postgres_fdw (db/fdw/consumer_edges.sql) only.
-- Another one brings functions every role may run (dblink's connect elsewhere): reported, never
-- dropped (a person decides; it may be in use).
SELECT format(E'-- %s: unexpected extension %s (schema %s, owner %s): not dropped',
              current_database(), e.extname, e.extnamespace::regnamespace,
              pg_get_userbyid(e.extowner))
FROM pg_extension AS e
WHERE e.extname NOT IN ('plpgsql', 'postgres_fdw')
ORDER BY e.extname \gexec
