from apps.likes.models import metadata
from ops.migrate import run_env

run_env("likes", metadata)
