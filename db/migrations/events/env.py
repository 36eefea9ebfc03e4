from apps.events.models import metadata
from ops.migrate import run_env

run_env("events", metadata)
