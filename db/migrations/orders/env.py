from apps.orders.models import metadata
from ops.migrate import run_env

run_env("orders", metadata)
