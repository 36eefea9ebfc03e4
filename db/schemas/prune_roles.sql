-- Drop the roles of rose's namespace that rose does not declare (`rose db provision --prune`).
--
-- Run by hand as a superuser, connected to any database of the server, after every other file
-- has revoked what such a role was granted, from the repository's root
-- (the password in PGPASSWORD or ~/.pgpass). Print the psql command with every value
-- `rose db provision` passes, read it, run what it prints:
--   .venv/bin/rose db print-psql db/schemas/prune_roles.sql
-- Never shorten its values: the file converges to exactly the declaration it is given, so what
-- a partial one leaves out (another service's roles or CONNECT, an FDW edge, a reader's grant)
-- is revoked, reset or dropped. Passwords are left out (null): none is compared or changed.
-- `rose db provision --dry-run` prints the statements a run would execute.
-- known: every role rose declares on the server; a role of the namespace left out is dropped.
-- A role that still owns objects is not dropped: DROP ROLE fails, its detail naming the
-- databases that hold them ("1 object in database db_likes": connect there and reassign or
-- drop them by hand first). See db/schemas/roles.sql for how these files work.

SELECT format(E'-- cluster: unknown role %s in rose''s namespace\nDROP ROLE %I', p.rolname, p.rolname)
FROM pg_roles AS p
WHERE p.rolname ~ :'namespace'
  AND p.rolname NOT IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY p.rolname \gexec
