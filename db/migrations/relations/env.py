from apps.relations.models import metadata
from ops.migrate import run_env

run_env("relations", metadata)
