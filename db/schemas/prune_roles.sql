-- Drop the roles of rose's namespace that rose does not declare (`rose db provision --prune`).
--
-- Run as a superuser, connected to any database of the server, after every other file has
-- revoked what such a role was granted:
--   psql -v namespace='^(blog|cart|events|likes|market|orders|relations)_' \
--        -v known='["likes_owner", "likes_app", ...]' -f db/schemas/prune_roles.sql
-- A role that still owns objects is not dropped: DROP ROLE fails and names them (reassign or
-- drop them by hand first). See db/schemas/roles.sql for how these files work.

SELECT format(E'-- cluster: unknown role %s in rose''s namespace\nDROP ROLE %I', p.rolname, p.rolname)
FROM pg_roles AS p
WHERE p.rolname ~ :'namespace'
  AND p.rolname NOT IN (SELECT jsonb_array_elements_text(:'known'::jsonb))
ORDER BY p.rolname \gexec
