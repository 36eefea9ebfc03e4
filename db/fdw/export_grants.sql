-- The provider side of the FDW edges of one service: who may read which columns of its export
-- views. Each edge's reader role <provider>_ro_<consumer> (db/schemas/roles.sql) gets SELECT on
-- exactly the columns the edge declares in db/fdw/manifest.toml, nothing else; every other grant
-- on the export schema and its views is revoked. Column grants mean a column added to a view
-- reaches no reader until an edge declares it. Each service's Alembic environment also runs it,
-- as <svc>_owner, after its migrations, so views recreated by a migration get their grants back.
--
-- Run by hand as a superuser, connected to the provider database,
-- from the repository's root (the password in PGPASSWORD or ~/.pgpass). Print the psql
-- command with every value `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/fdw/export_grants.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- owner: the provider's owner. grants: one entry per edge and view, every edge the provider
-- serves, [{"edge", "reader", "view", "columns": [{"name", "type"}]}]. secrets: provider
-- columns only the listed views may read, [{"schema", "table", "column", "only_in"}].
-- See db/schemas/roles.sql for how these files work.

-- The export views belong to the owner (its migrations create them).
SELECT format(E'-- %s: %s export.%I is owned by %s, not %s\nALTER %s export.%I OWNER TO %I',
              current_database(), CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END,
              c.relname, pg_get_userbyid(c.relowner), :'owner',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             ELSE 'TABLE' END,
              c.relname, :'owner')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'export'
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND pg_get_userbyid(c.relowner) <> :'owner' \gexec

-- Every export view is a security barrier: its own conditions run before any a reader adds (a
-- cheap function of the reader's, shipped by postgres_fdw, would otherwise see the rows the view
-- hides and could say them in its error). CREATE OR REPLACE VIEW without WITH (security_barrier)
-- drops it.
SELECT format(E'-- %s: export view %I is not a security barrier\nALTER VIEW export.%I SET (security_barrier = true)',
              current_database(), c.relname, c.relname)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'export'
WHERE c.relkind = 'v'
  AND NOT coalesce('security_barrier=true' = ANY (c.reloptions), false) \gexec

-- The reader roles use the export schema; nobody else does.
WITH declared AS (
    SELECT DISTINCT g.reader AS grantee, 'USAGE' AS privilege
    FROM jsonb_to_recordset(:'grants'::jsonb) AS g(reader text)
    WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = g.reader)
), actual AS (
    SELECT coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege, a.is_grantable,
           pg_get_userbyid(a.grantor) AS grantor, a.grantor = n.nspowner AS by_owner
    FROM pg_namespace AS n
    CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE n.nspname = 'export' AND a.grantee <> n.nspowner
)
SELECT format(E'-- %s: missing privilege USAGE on schema export for %s\nGRANT USAGE ON SCHEMA export TO %I',
              current_database(), d.grantee, d.grantee)
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM actual AS a WHERE (a.grantee, a.privilege) = (d.grantee, d.privilege))
UNION ALL
-- A declared privilege that carries a grant option loses the option only (REVOKE USAGE would
-- take the privilege itself, which the GRANT above, computed before, found present).
SELECT format(E'-- %s: extra grant option for %s on schema export for %s\n'
              'REVOKE GRANT OPTION FOR %s ON SCHEMA export FROM %I%s CASCADE',
              current_database(), a.privilege, a.grantee, a.privilege, a.grantee,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN declared AS d USING (grantee, privilege)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- %s: extra privilege %s on schema export for %s\nREVOKE %s ON SCHEMA export FROM %s%s CASCADE',
              current_database(), a.privilege, a.grantee, a.privilege,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
WHERE NOT EXISTS (SELECT FROM declared AS d WHERE (a.grantee, a.privilege) = (d.grantee, d.privilege))
\gexec

-- SELECT on exactly the declared columns of each edge's views, and no other privilege on any
-- export view (no table-wide SELECT: a column added to a view stays unreadable).
-- An export view that reads a secret column it may not (from the table, or from a view allowed
-- to carry it) is closed to every reader until it is fixed: a test for NULL (page_configs'
-- sumup_configured) is all another view may do with a secret.
WITH view AS (
    SELECT c.oid, c.relname, c.relowner, c.relacl
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'export'
    WHERE c.relkind IN ('r', 'p', 'v', 'm')
), secret AS (
    SELECT s.schema, s.table, s.column, s.only_in,
           format('%s.%s.%s', s.schema, s.table, s.column) AS label
    FROM jsonb_to_recordset(:'secrets'::jsonb)
         AS s(schema text, "table" text, "column" text, only_in jsonb)
), source AS (
    SELECT s.label, s.column, s.only_in, t.oid AS relid, att.attnum
    FROM secret AS s
    JOIN pg_namespace AS tn ON tn.nspname = s.schema
    JOIN pg_class AS t ON t.relnamespace = tn.oid AND t.relname = s.table
    JOIN pg_attribute AS att ON att.attrelid = t.oid AND att.attname = s.column
    UNION ALL
    SELECT s.label, s.column, s.only_in, v.oid, att.attnum
    FROM secret AS s
    CROSS JOIN LATERAL jsonb_array_elements_text(s.only_in) AS allowed
    JOIN view AS v ON v.relname = allowed
    JOIN pg_attribute AS att ON att.attrelid = v.oid AND att.attname = s.column
), leak AS (
    SELECT DISTINCT v.oid, v.relname, src.label,
           (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(src.only_in) AS x) AS only_in
    FROM source AS src
    JOIN pg_depend AS dep ON dep.refclassid = 'pg_class'::regclass AND dep.refobjid = src.relid
                         AND dep.refobjsubid = src.attnum AND dep.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite AS rw ON rw.oid = dep.objid
    JOIN view AS v ON v.oid = rw.ev_class AND v.oid <> src.relid
    WHERE NOT src.only_in ? v.relname
      AND regexp_replace(pg_get_viewdef(v.oid),
                         format('\m\w+\.%s IS (NOT )?NULL', src.column), '', 'g')
          ~ format('\m%s\M', src.column)
), declared AS (
    SELECT view.oid, g.reader AS grantee, col.name AS attname
    FROM jsonb_to_recordset(:'grants'::jsonb) AS g(reader text, "view" text, columns jsonb)
    JOIN view ON view.relname = g.view
    CROSS JOIN LATERAL jsonb_to_recordset(g.columns) AS col(name text)
    WHERE view.oid NOT IN (SELECT oid FROM leak)
      AND EXISTS (SELECT FROM pg_roles WHERE rolname = g.reader)
      AND EXISTS (SELECT FROM pg_attribute AS att
                  WHERE att.attrelid = view.oid AND att.attname = col.name AND NOT att.attisdropped)
), table_wide AS (
    SELECT view.oid, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           pg_get_userbyid(a.grantor) AS grantor, a.grantor = view.relowner AS by_owner
    FROM view
    CROSS JOIN LATERAL aclexplode(coalesce(view.relacl, acldefault('r', view.relowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE a.grantee <> view.relowner
), columns AS (
    SELECT view.oid, att.attname, coalesce(r.rolname, 'PUBLIC') AS grantee,
           x.privilege_type AS privilege, x.is_grantable,
           pg_get_userbyid(x.grantor) AS grantor, x.grantor = view.relowner AS by_owner
    FROM view
    JOIN pg_attribute AS att ON att.attrelid = view.oid AND att.attacl IS NOT NULL
    CROSS JOIN LATERAL aclexplode(att.attacl) AS x
    LEFT JOIN pg_roles AS r ON r.oid = x.grantee
    WHERE x.grantee <> view.relowner
)
SELECT format(E'-- %s: export view %I reads secret column %s (only %s may): '
              'closed to every reader until the view is fixed',
              current_database(), l.relname, l.label, l.only_in)
FROM leak AS l
UNION ALL
SELECT format(E'-- %s: missing privilege SELECT on column %s of view export.%I for %s\n'
              'GRANT SELECT (%I) ON export.%I TO %I',
              current_database(), d.attname, view.relname, d.grantee, d.attname, view.relname,
              d.grantee)
FROM declared AS d JOIN view USING (oid)
WHERE NOT EXISTS (SELECT FROM columns AS c
                  WHERE (c.oid, c.attname, c.grantee, c.privilege)
                      = (d.oid, d.attname, d.grantee, 'SELECT'))
  -- the table-wide revoke below gives this reader its columns back
  AND NOT EXISTS (SELECT FROM table_wide AS t
                  WHERE (t.oid, t.grantee, t.privilege) = (d.oid, d.grantee, 'SELECT'))
UNION ALL
-- REVOKE SELECT on the view also revokes the reader's SELECT on its columns (PostgreSQL takes
-- a table privilege's column privileges with it), so the same statement grants the edge's
-- columns again: one run converges, and --dry-run shows exactly what it does (audit s20b M1).
SELECT format(E'-- %s: extra privilege %s on view export.%I for %s\nREVOKE %s ON export.%I FROM %s%s CASCADE%s',
              current_database(), t.privilege, view.relname, t.grantee, t.privilege,
              view.relname,
              CASE WHEN t.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(t.grantee) END,
              CASE WHEN t.by_owner THEN '' ELSE format(' GRANTED BY %I', t.grantor) END,
              (SELECT format(E';\nGRANT SELECT (%s) ON export.%I TO %I',
                             string_agg(quote_ident(d.attname), ', ' ORDER BY att.attnum),
                             view.relname, t.grantee)
               FROM declared AS d
               JOIN pg_attribute AS att ON att.attrelid = d.oid AND att.attname = d.attname
               WHERE t.privilege = 'SELECT' AND (d.oid, d.grantee) = (t.oid, t.grantee)
               HAVING count(*) > 0))
FROM table_wide AS t JOIN view USING (oid)
UNION ALL
-- A declared column privilege that carries a grant option loses the option only.
SELECT format(E'-- %s: extra grant option for %s on column %s of view export.%I for %s\n'
              'REVOKE GRANT OPTION FOR %s (%I) ON export.%I FROM %I%s CASCADE',
              current_database(), c.privilege, c.attname, view.relname, c.grantee, c.privilege,
              c.attname, view.relname, c.grantee,
              CASE WHEN c.by_owner THEN '' ELSE format(' GRANTED BY %I', c.grantor) END)
FROM columns AS c JOIN view USING (oid)
WHERE c.is_grantable AND c.privilege = 'SELECT'
  AND EXISTS (SELECT FROM declared AS d
              WHERE (d.oid, d.attname, d.grantee) = (c.oid, c.attname, c.grantee))
UNION ALL
SELECT format(E'-- %s: extra privilege %s on column %s of view export.%I for %s\n'
              'REVOKE %s (%I) ON export.%I FROM %s%s CASCADE',
              current_database(), c.privilege, c.attname, view.relname, c.grantee, c.privilege,
              c.attname, view.relname,
              CASE WHEN c.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(c.grantee) END,
              CASE WHEN c.by_owner THEN '' ELSE format(' GRANTED BY %I', c.grantor) END)
FROM columns AS c JOIN view USING (oid)
WHERE NOT EXISTS (SELECT FROM declared AS d
                  WHERE (d.oid, d.attname, d.grantee) = (c.oid, c.attname, c.grantee)
                    AND c.privilege = 'SELECT') \gexec

-- What provisioning cannot repair, because the views are the migrations': a declared view that
-- does not exist yet, a declared column the view lacks or types differently, and a view column
-- that no edge declares (it reaches no reader and no foreign table: fix the view, or declare the
-- column in db/fdw/manifest.toml).
WITH declared AS (
    SELECT g.edge, g.view, col.name, col.type
    FROM jsonb_to_recordset(:'grants'::jsonb) AS g(edge text, "view" text, columns jsonb)
    CROSS JOIN LATERAL jsonb_to_recordset(g.columns) AS col(name text, type text)
), actual AS (
    SELECT c.relname AS view, att.attname AS name, format_type(att.atttypid, att.atttypmod) AS type
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'export'
    JOIN pg_attribute AS att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
)
SELECT format(E'-- %s: pending: export view export.%I does not exist yet (edges %s; its service''s migrations make it)',
              current_database(), d.view, string_agg(DISTINCT d.edge, ', '))
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM actual AS a WHERE a.view = d.view)
GROUP BY d.view
UNION ALL
SELECT format(E'-- %s: export view export.%I lacks column %s declared by edge %s',
              current_database(), d.view, d.name, d.edge)
FROM declared AS d
WHERE EXISTS (SELECT FROM actual AS a WHERE a.view = d.view)
  AND NOT EXISTS (SELECT FROM actual AS a WHERE (a.view, a.name) = (d.view, d.name))
UNION ALL
SELECT format(E'-- %s: column %s of export view export.%I is %s, edge %s declares %s',
              current_database(), d.name, d.view, a.type, d.edge, d.type)
FROM declared AS d JOIN actual AS a USING (view, name)
WHERE a.type <> d.type
UNION ALL
SELECT format(E'-- %s: export view export.%I exposes undeclared column %s (%s): not propagated '
              '(fix the view, or declare the column in db/fdw/manifest.toml)',
              current_database(), a.view, a.name, a.type)
FROM actual AS a
WHERE a.view IN (SELECT view FROM declared)
  AND NOT EXISTS (SELECT FROM declared AS d WHERE (d.view, d.name) = (a.view, a.name)) \gexec
