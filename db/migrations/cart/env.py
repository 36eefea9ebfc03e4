from apps.cart.models import metadata
from ops.migrate import run_env

run_env("cart", metadata)
