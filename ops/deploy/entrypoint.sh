#!/bin/sh
# Container entrypoint. APP names the service to run (blog, market, cart, events, relations,
# likes, orders), or one of the one-shot jobs:
#   APP=migrate        provision databases, roles and FDW edges, then run every migration
#   APP=sumup-sandbox  the local SumUp sandbox (never in production)
set -eu
: "${APP:?set APP to a service name, migrate or sumup-sandbox}"

case "$APP" in
    migrate)
        rose db provision
        exec rose db migrate
        ;;
    sumup-sandbox)
        exec rose sumup-sandbox --host 0.0.0.0 --port "${PORT:-8099}"
        ;;
    *)
        # WEB_CONCURRENCY: worker processes of the service on its port (default 1).
        exec python -m ops.stack.serve "$APP" --host 0.0.0.0 --port "${PORT:-8000}" \
            --workers "${WEB_CONCURRENCY:-1}"
        ;;
esac
