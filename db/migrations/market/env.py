from apps.market.models import metadata
from ops.migrate import run_env

run_env("market", metadata)
