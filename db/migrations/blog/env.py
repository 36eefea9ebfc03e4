from apps.blog.models import metadata
from ops.migrate import run_env

run_env("blog", metadata)
