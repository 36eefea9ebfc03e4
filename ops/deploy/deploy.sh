#!/usr/bin/env bash
# Deploy the rose-ash services with docker compose on one host: build the image, provision and
# migrate (one-shot), then restart each service in turn and wait for it to be ready.
# Usage: ops/deploy/deploy.sh [service ...]   (default: every service)
set -euo pipefail
cd "$(dirname "$0")/../.."

APPS=(relations likes orders cart blog market events)
if [ "$#" -gt 0 ]; then
    APPS=("$@")
fi
COMPOSE=(docker compose -f compose.yaml)

"${COMPOSE[@]}" build
"${COMPOSE[@]}" up -d postgres
"${COMPOSE[@]}" run --rm migrate

for app in "${APPS[@]}"; do
    echo "deploying $app"
    "${COMPOSE[@]}" up -d --no-deps "$app"
    for _ in $(seq 1 60); do
        if "${COMPOSE[@]}" exec -T "$app" python -c \
            "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)" \
            >/dev/null 2>&1; then
            echo "$app is ready"
            continue 2
        fi
        sleep 2
    done
    echo "$app did not become ready; see: docker compose logs $app" >&2
    exit 1
done
"${COMPOSE[@]}" up -d caddy
