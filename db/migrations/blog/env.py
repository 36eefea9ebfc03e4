from apps.blog.models import metadata
from ops.db.migrate import run_env
from ops.db.provision import grant_exports

# A migration that recreates an export view drops its grants: give the FDW readers theirs back
# (as the owner, on the same connection), so plain `alembic -n blog upgrade` keeps every edge.
run_env("blog", metadata, after_migrations=grant_exports)
