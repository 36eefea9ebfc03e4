-- The consumer side of the FDW edges of one service: a foreign server per provider, user
-- mappings, and the provider's export views as foreign tables with exactly the declared columns
-- (db/fdw/manifest.toml), never imported from whatever the provider's view shows. Any other
-- foreign server, user mapping or foreign table in the database is dropped (they hold no data).
--
-- Run by hand as a superuser, connected to the consumer database, after
-- db/schemas/service_database.sql,
-- from the repository's root (the password in PGPASSWORD or ~/.pgpass). Print the psql
-- command with every value `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/fdw/consumer_edges.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- owner, app: the consumer's roles. edges: every edge it reads, [{"edge", "provider", "server",
-- "host", "port", "dbname", "reader", "password", "views": [{"name", "columns": [{"name",
-- "type"}]}]}] (host and port: how the consumer's server reaches the provider's).
-- password: the reader role's; null (print-psql, and `rose db check`, which has no passwords)
-- compares everything but the password, and a user mapping it creates then has none (nothing
-- reads through it until `rose db provision`, which knows the passwords, sets them; roles.sql
-- run by hand likewise creates the login roles without one). See db/schemas/roles.sql for how
-- these files work.

SELECT format(E'-- %s: missing extension postgres_fdw\nCREATE EXTENSION postgres_fdw',
              current_database())
WHERE jsonb_array_length(:'edges'::jsonb) > 0
  AND NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'postgres_fdw') \gexec

-- One foreign server per provider. updatable 'false': the first of three read-only guards (the
-- reader's column-only SELECT grants and its default_transaction_read_only are the others).
-- fetch_size: fewer round trips for list pages. keep_connections: one remote connection per
-- local session, not per transaction. connect_timeout: an unreachable provider costs seconds.
WITH declared AS (
    SELECT e.server, o.key, o.value
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(server text, host text, port text, dbname text)
    CROSS JOIN LATERAL (VALUES ('host', e.host), ('port', e.port), ('dbname', e.dbname),
                               ('updatable', 'false'), ('fetch_size', '1000'),
                               ('keep_connections', 'on'), ('connect_timeout', '2')) AS o(key, value)
), actual AS (
    SELECT s.srvname AS server, split_part(o, '=', 1) AS key, substr(o, strpos(o, '=') + 1) AS value
    FROM pg_foreign_server AS s CROSS JOIN unnest(s.srvoptions) AS o
)
SELECT format(E'-- %s: missing foreign server %s\nCREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw OPTIONS (%s)',
              current_database(), d.server, d.server,
              string_agg(format('%s %L', d.key, d.value), ', '))
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM pg_foreign_server WHERE srvname = d.server)
GROUP BY d.server
UNION ALL
SELECT format(E'-- %s: foreign server %s option %s is %s, declared %L\nALTER SERVER %I OPTIONS (%s %I %L)',
              current_database(), d.server, d.key, coalesce(quote_literal(a.value), 'not set'),
              d.value, d.server, CASE WHEN a.value IS NULL THEN 'ADD' ELSE 'SET' END, d.key, d.value)
FROM declared AS d LEFT JOIN actual AS a USING (server, key)
WHERE EXISTS (SELECT FROM pg_foreign_server WHERE srvname = d.server)
  AND a.value IS DISTINCT FROM d.value
UNION ALL
SELECT format(E'-- %s: foreign server %s has undeclared option %s %L\nALTER SERVER %I OPTIONS (DROP %I)',
              current_database(), a.server, a.key, a.value, a.server, a.key)
FROM actual AS a
WHERE a.server IN (SELECT server FROM declared)
  AND NOT EXISTS (SELECT FROM declared AS d WHERE (d.server, d.key) = (a.server, a.key))
UNION ALL
SELECT format(E'-- %s: unexpected foreign server %s (its user mappings and foreign tables go with it)\n'
              'DROP SERVER %I CASCADE', current_database(), s.srvname, s.srvname)
FROM pg_foreign_server AS s
WHERE s.srvname NOT IN (SELECT server FROM declared) \gexec

-- Only the consumer's owner may use a server (it owns the foreign tables); the app role reads
-- the foreign tables it is granted and needs no USAGE.
WITH declared AS (
    SELECT e.server, :'owner' AS grantee, 'USAGE' AS privilege
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(server text)
), actual AS (
    SELECT s.srvname AS server, coalesce(r.rolname, 'PUBLIC') AS grantee,
           a.privilege_type AS privilege, a.is_grantable,
           pg_get_userbyid(a.grantor) AS grantor, a.grantor = s.srvowner AS by_owner
    FROM pg_foreign_server AS s
    CROSS JOIN LATERAL aclexplode(coalesce(s.srvacl, acldefault('S', s.srvowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE a.grantee <> s.srvowner AND s.srvname IN (SELECT server FROM declared)
)
SELECT format(E'-- %s: missing privilege USAGE on foreign server %s for %s\nGRANT USAGE ON FOREIGN SERVER %I TO %I',
              current_database(), d.server, d.grantee, d.server, d.grantee)
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM actual AS a
                  WHERE (a.server, a.grantee, a.privilege) = (d.server, d.grantee, d.privilege))
UNION ALL
-- A declared privilege with a grant option loses the option only (a REVOKE of the privilege
-- would take what the GRANT above, computed before, found present).
SELECT format(E'-- %s: extra grant option for %s on foreign server %s for %s\n'
              'REVOKE GRANT OPTION FOR %s ON FOREIGN SERVER %I FROM %I%s CASCADE',
              current_database(), a.privilege, a.server, a.grantee, a.privilege, a.server,
              a.grantee, CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN declared AS d USING (server, grantee, privilege)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- %s: extra privilege %s on foreign server %s for %s\nREVOKE %s ON FOREIGN SERVER %I FROM %s%s CASCADE',
              current_database(), a.privilege, a.server, a.grantee, a.privilege, a.server,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
WHERE NOT EXISTS (SELECT FROM declared AS d
                  WHERE (a.server, a.grantee, a.privilege) = (d.server, d.grantee, d.privilege))
\gexec

-- The wrapper itself is its owner's (the superuser's) alone: USAGE on it lets a role create
-- foreign servers of its own, connections from this server to any host and database, as any
-- role whose password it knows. Nobody is declared one.
SELECT format(E'-- %s: extra privilege %s on foreign data wrapper %s for %s\n'
              'REVOKE %s ON FOREIGN DATA WRAPPER %I FROM %s%s CASCADE',
              current_database(), a.privilege_type, w.fdwname, coalesce(r.rolname, 'PUBLIC'),
              a.privilege_type, w.fdwname, coalesce(quote_ident(r.rolname), 'PUBLIC'),
              CASE WHEN a.grantor = w.fdwowner THEN ''
                   ELSE format(' GRANTED BY %I', pg_get_userbyid(a.grantor)) END)
FROM pg_foreign_data_wrapper AS w
CROSS JOIN LATERAL aclexplode(coalesce(w.fdwacl, acldefault('F', w.fdwowner))) AS a
LEFT JOIN pg_roles AS r ON r.oid = a.grantee
WHERE a.grantee <> w.fdwowner
ORDER BY 1 \gexec

-- User mappings: the owner (which owns the foreign tables) and the app (which queries them) log
-- in remotely as the edge's reader role, always with an explicit user and a password (never
-- password_required 'false'). No other mapping exists.
WITH declared AS (
    SELECT e.server, m.usename, o.key, o.value
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(server text, reader text, password text)
    CROSS JOIN (VALUES (:'owner'), (:'app')) AS m(usename)
    CROSS JOIN LATERAL (VALUES ('user', e.reader), ('password', e.password)) AS o(key, value)
), actual AS (
    SELECT um.srvname AS server, um.usename, split_part(o, '=', 1) AS key,
           substr(o, strpos(o, '=') + 1) AS value
    FROM pg_user_mappings AS um CROSS JOIN unnest(um.umoptions) AS o
), mapping AS (
    SELECT DISTINCT server, usename FROM declared
)
SELECT format(E'-- %s: missing user mapping for %s on %s\nCREATE USER MAPPING FOR %I SERVER %I OPTIONS (%s)',
              current_database(), m.usename, m.server, m.usename, m.server,
              string_agg(format('%s %L', d.key, d.value), ', ') FILTER (WHERE d.value IS NOT NULL))
FROM mapping AS m JOIN declared AS d USING (server, usename)
WHERE NOT EXISTS (SELECT FROM pg_user_mappings AS um
                  WHERE (um.srvname, um.usename) = (m.server, m.usename))
GROUP BY m.server, m.usename
UNION ALL
SELECT format(E'-- %s: user mapping for %s on %s: option %s %s\nALTER USER MAPPING FOR %I SERVER %I OPTIONS (%s %I %L)',
              current_database(), d.usename, d.server, d.key,
              CASE WHEN a.value IS NULL THEN 'is missing'
                   WHEN d.key = 'password' THEN 'differs from the reader''s password'
                   ELSE format('is %L, declared %L', a.value, d.value) END,
              d.usename, d.server, CASE WHEN a.value IS NULL THEN 'ADD' ELSE 'SET' END, d.key, d.value)
FROM declared AS d LEFT JOIN actual AS a USING (server, usename, key)
WHERE EXISTS (SELECT FROM pg_user_mappings AS um
              WHERE (um.srvname, um.usename) = (d.server, d.usename))
  AND d.value IS NOT NULL AND a.value IS DISTINCT FROM d.value
UNION ALL
SELECT format(E'-- %s: user mapping for %s on %s has no password', current_database(),
              d.usename, d.server)
FROM declared AS d LEFT JOIN actual AS a USING (server, usename, key)
WHERE d.key = 'password' AND d.value IS NULL AND a.value IS NULL
  AND EXISTS (SELECT FROM pg_user_mappings AS um
              WHERE (um.srvname, um.usename) = (d.server, d.usename))
UNION ALL
SELECT format(E'-- %s: user mapping for %s on %s has undeclared option %s\nALTER USER MAPPING FOR %I SERVER %I OPTIONS (DROP %I)',
              current_database(), a.usename, a.server, a.key, a.usename, a.server, a.key)
FROM actual AS a
JOIN mapping AS m USING (server, usename)
WHERE a.key NOT IN ('user', 'password')
UNION ALL
SELECT format(E'-- %s: extra user mapping for %s on %s\nDROP USER MAPPING FOR %s SERVER %I',
              current_database(), um.usename, um.srvname,
              CASE WHEN um.umuser = 0 THEN 'PUBLIC' ELSE quote_ident(um.usename) END, um.srvname)
FROM pg_user_mappings AS um
WHERE NOT EXISTS (SELECT FROM mapping AS m WHERE (m.server, m.usename) = (um.srvname, um.usename))
  AND um.srvname IN (SELECT server FROM mapping) \gexec

-- The provider's views appear in a schema named after the provider, owned by the consumer's
-- owner; the app role may use it, nobody else.
SELECT format(E'-- %s: missing schema %s\nCREATE SCHEMA %I AUTHORIZATION %I',
              current_database(), e.provider, e.provider, :'owner')
FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text)
WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = e.provider) \gexec

SELECT format(E'-- %s: schema %s is owned by %s, not %s\nALTER SCHEMA %I OWNER TO %I',
              current_database(), n.nspname, pg_get_userbyid(n.nspowner), :'owner',
              n.nspname, :'owner')
FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text)
JOIN pg_namespace AS n ON n.nspname = e.provider
WHERE pg_get_userbyid(n.nspowner) <> :'owner' \gexec

WITH declared AS (
    SELECT e.provider AS nspname, :'app' AS grantee, 'USAGE' AS privilege
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text)
), actual AS (
    SELECT n.nspname, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           a.is_grantable, pg_get_userbyid(a.grantor) AS grantor, a.grantor = n.nspowner AS by_owner
    FROM pg_namespace AS n
    CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE n.nspname IN (SELECT nspname FROM declared) AND a.grantee <> n.nspowner
)
SELECT format(E'-- %s: missing privilege %s on schema %s for %s\nGRANT %s ON SCHEMA %I TO %I',
              current_database(), d.privilege, d.nspname, d.grantee, d.privilege, d.nspname,
              d.grantee)
FROM declared AS d
WHERE NOT EXISTS (SELECT FROM actual AS a
                  WHERE (a.nspname, a.grantee, a.privilege) = (d.nspname, d.grantee, d.privilege))
UNION ALL
SELECT format(E'-- %s: extra grant option for %s on schema %s for %s\n'
              'REVOKE GRANT OPTION FOR %s ON SCHEMA %I FROM %I%s CASCADE',
              current_database(), a.privilege, a.nspname, a.grantee, a.privilege, a.nspname,
              a.grantee, CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN declared AS d USING (nspname, grantee, privilege)
WHERE a.is_grantable
UNION ALL
SELECT format(E'-- %s: extra privilege %s on schema %s for %s\nREVOKE %s ON SCHEMA %I FROM %s%s CASCADE',
              current_database(), a.privilege, a.nspname, a.grantee, a.privilege, a.nspname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a
WHERE NOT EXISTS (SELECT FROM declared AS d
                  WHERE (a.nspname, a.grantee, a.privilege) = (d.nspname, d.grantee, d.privilege))
\gexec

-- The foreign tables: exactly the declared columns (names and types, no options but the remote
-- column's own name), on the edge's server, reading export.<view>, owned by the consumer's owner
-- and readable by its app. A table that differs is dropped and created again in one statement
-- (one transaction: readers never see it missing).
WITH declared AS (
    SELECT e.edge, e.provider AS nspname, e.server, v.name AS relname,
           (SELECT string_agg(format('%I %s', col->>'name', col->>'type'), ', ' ORDER BY ord)
            FROM jsonb_array_elements(v.columns) WITH ORDINALITY AS c(col, ord)) AS columns
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(edge text, provider text, server text, views jsonb)
    CROSS JOIN LATERAL jsonb_to_recordset(e.views) AS v(name text, columns jsonb)
), actual AS (
    SELECT c.oid, n.nspname, c.relname, s.srvname AS server, c.relowner,
           (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)),
                              ', ' ORDER BY a.attnum)
            FROM pg_attribute AS a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
           EXISTS (SELECT FROM pg_attribute AS a
                   LEFT JOIN LATERAL unnest(a.attfdwoptions) AS o ON true
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     AND (a.attnotnull OR a.atthasdef OR o <> 'column_name=' || a.attname))
               AS odd_columns
    FROM pg_foreign_table AS ft
    JOIN pg_class AS c ON c.oid = ft.ftrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    JOIN pg_foreign_server AS s ON s.oid = ft.ftserver
), definition AS (
    SELECT d.*,
           format(E'CREATE FOREIGN TABLE %I.%I (%s) SERVER %I OPTIONS (schema_name %L, table_name %L);\n'
                  'ALTER FOREIGN TABLE %I.%I OWNER TO %I;\nGRANT SELECT ON %I.%I TO %I',
                  d.nspname, d.relname, d.columns, d.server, 'export', d.relname,
                  d.nspname, d.relname, :'owner', d.nspname, d.relname, :'app') AS create_sql
    FROM declared AS d
)
SELECT format(E'-- %s: missing foreign table %s.%s (edge %s)\n%s',
              current_database(), d.nspname, d.relname, d.edge, d.create_sql)
FROM definition AS d
WHERE NOT EXISTS (SELECT FROM actual AS a WHERE (a.nspname, a.relname) = (d.nspname, d.relname))
UNION ALL
SELECT format(E'-- %s: foreign table %s.%s is out of date with the declared columns of edge %s '
              '(local: %s%s; declared: %s on %s)\nDROP FOREIGN TABLE %I.%I;\n%s',
              current_database(), d.nspname, d.relname, d.edge, a.columns,
              CASE WHEN a.odd_columns THEN ', with column options or constraints' ELSE '' END
              || CASE WHEN a.server <> d.server THEN ' on ' || a.server ELSE '' END,
              d.columns, d.server, d.nspname, d.relname, d.create_sql)
FROM definition AS d JOIN actual AS a USING (nspname, relname)
WHERE a.columns IS DISTINCT FROM d.columns OR a.odd_columns OR a.server <> d.server
UNION ALL
SELECT format(E'-- %s: unexpected foreign table %s.%s\nDROP FOREIGN TABLE %I.%I',
              current_database(), a.nspname, a.relname, a.nspname, a.relname)
FROM actual AS a
WHERE NOT EXISTS (SELECT FROM declared AS d WHERE (d.nspname, d.relname) = (a.nspname, a.relname))
\gexec

-- Their options (which remote view they read) and owner.
WITH declared AS (
    SELECT e.provider AS nspname, v.name AS relname, o.key, o.value
    FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text, views jsonb)
    CROSS JOIN LATERAL jsonb_to_recordset(e.views) AS v(name text)
    CROSS JOIN LATERAL (VALUES ('schema_name', 'export'), ('table_name', v.name)) AS o(key, value)
), actual AS (
    SELECT n.nspname, c.relname, split_part(o, '=', 1) AS key, substr(o, strpos(o, '=') + 1) AS value
    FROM pg_foreign_table AS ft
    JOIN pg_class AS c ON c.oid = ft.ftrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN unnest(ft.ftoptions) AS o
), existing AS (
    SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner) AS owner
    FROM pg_foreign_table AS ft
    JOIN pg_class AS c ON c.oid = ft.ftrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
)
SELECT format(E'-- %s: foreign table %s.%s option %s is %s, declared %L\nALTER FOREIGN TABLE %I.%I OPTIONS (%s %I %L)',
              current_database(), d.nspname, d.relname, d.key,
              coalesce(quote_literal(a.value), 'not set'), d.value, d.nspname, d.relname,
              CASE WHEN a.value IS NULL THEN 'ADD' ELSE 'SET' END, d.key, d.value)
FROM declared AS d
JOIN existing AS x USING (nspname, relname)
LEFT JOIN actual AS a USING (nspname, relname, key)
WHERE a.value IS DISTINCT FROM d.value
UNION ALL
SELECT format(E'-- %s: foreign table %s.%s has undeclared option %s %L\nALTER FOREIGN TABLE %I.%I OPTIONS (DROP %I)',
              current_database(), a.nspname, a.relname, a.key, a.value, a.nspname, a.relname, a.key)
FROM actual AS a
WHERE EXISTS (SELECT FROM declared AS d WHERE (d.nspname, d.relname) = (a.nspname, a.relname))
  AND NOT EXISTS (SELECT FROM declared AS d
                  WHERE (d.nspname, d.relname, d.key) = (a.nspname, a.relname, a.key))
UNION ALL
SELECT format(E'-- %s: foreign table %s.%s is owned by %s, not %s\nALTER FOREIGN TABLE %I.%I OWNER TO %I',
              current_database(), x.nspname, x.relname, x.owner, :'owner', x.nspname, x.relname,
              :'owner')
FROM existing AS x
WHERE x.owner <> :'owner'
  AND EXISTS (SELECT FROM declared AS d WHERE (d.nspname, d.relname) = (x.nspname, x.relname))
\gexec

-- Privileges on them: the app role reads them (table-wide SELECT), nobody else does anything.
WITH ft AS (
    SELECT c.oid, n.nspname, c.relname, c.relowner, c.relacl
    FROM pg_foreign_table AS f
    JOIN pg_class AS c ON c.oid = f.ftrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE (n.nspname, c.relname) IN (
        SELECT e.provider, v.name
        FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text, views jsonb)
        CROSS JOIN LATERAL jsonb_to_recordset(e.views) AS v(name text))
), actual AS (
    SELECT ft.oid, coalesce(r.rolname, 'PUBLIC') AS grantee, a.privilege_type AS privilege,
           a.is_grantable, pg_get_userbyid(a.grantor) AS grantor, a.grantor = ft.relowner AS by_owner
    FROM ft
    CROSS JOIN LATERAL aclexplode(coalesce(ft.relacl, acldefault('r', ft.relowner))) AS a
    LEFT JOIN pg_roles AS r ON r.oid = a.grantee
    WHERE a.grantee <> ft.relowner
)
SELECT format(E'-- %s: missing privilege SELECT on foreign table %I.%I for %s\nGRANT SELECT ON %I.%I TO %I',
              current_database(), ft.nspname, ft.relname, :'app', ft.nspname, ft.relname, :'app')
FROM ft
WHERE NOT EXISTS (SELECT FROM actual AS a
                  WHERE (a.oid, a.grantee, a.privilege) = (ft.oid, :'app', 'SELECT'))
UNION ALL
-- The app's SELECT with a grant option loses the option only: REVOKE SELECT would take the
-- privilege itself, which the GRANT above, computed before, found present.
SELECT format(E'-- %s: extra grant option for SELECT on foreign table %I.%I for %s\n'
              'REVOKE GRANT OPTION FOR SELECT ON %I.%I FROM %I%s CASCADE',
              current_database(), ft.nspname, ft.relname, a.grantee, ft.nspname, ft.relname,
              a.grantee, CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN ft USING (oid)
WHERE a.is_grantable AND (a.grantee, a.privilege) = (:'app', 'SELECT')
UNION ALL
SELECT format(E'-- %s: extra privilege %s on foreign table %I.%I for %s\nREVOKE %s ON %I.%I FROM %s%s CASCADE',
              current_database(), a.privilege, ft.nspname, ft.relname, a.grantee, a.privilege,
              ft.nspname, ft.relname,
              CASE WHEN a.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(a.grantee) END,
              CASE WHEN a.by_owner THEN '' ELSE format(' GRANTED BY %I', a.grantor) END)
FROM actual AS a JOIN ft USING (oid)
WHERE (a.grantee, a.privilege) <> (:'app', 'SELECT')
UNION ALL
SELECT format(E'-- %s: extra privilege %s on column %s of foreign table %I.%I for %s\n'
              'REVOKE %s (%I) ON %I.%I FROM %s CASCADE',
              current_database(), x.privilege_type, att.attname, ft.nspname, ft.relname,
              coalesce(r.rolname, 'PUBLIC'), x.privilege_type, att.attname, ft.nspname,
              ft.relname, coalesce(quote_ident(r.rolname), 'PUBLIC'))
FROM ft
JOIN pg_attribute AS att ON att.attrelid = ft.oid AND att.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(att.attacl) AS x
LEFT JOIN pg_roles AS r ON r.oid = x.grantee
WHERE x.grantee <> ft.relowner \gexec

-- Anything else in a provider's schema is unexpected: reported, not dropped.
SELECT format(E'-- %s: unexpected %s %I.%I in the FDW schema of %s: not dropped',
              current_database(),
              CASE c.relkind WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' ELSE 'table' END,
              n.nspname, c.relname, n.nspname)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname IN (SELECT e.provider FROM jsonb_to_recordset(:'edges'::jsonb) AS e(provider text))
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S') \gexec
