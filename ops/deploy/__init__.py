"""Running rose-ash as containers: the Dockerfile, its entrypoint, deploy.sh, and the Caddyfile
template (``Caddyfile.j2``, package data, rendered by :mod:`ops.stack.proxy`)."""
