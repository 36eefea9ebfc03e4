#!/usr/bin/env bash
# Deploy the rose-ash services with docker compose on one host (docs/deployment.md): build the
# image for this commit (or reuse it), provision + migrate (one-shot job), then restart each
# service in turn, waiting for it to be ready, and reload Caddy.
#
# Usage: ops/deploy/deploy.sh [service ...]       (default: every service)
#   ROSE_TAG=<tag> ops/deploy/deploy.sh           roll out (or back to) the image rose-ash:<tag>;
#                                                 default: the current commit's short hash
#   ROSE_MIGRATE=0 ...                            skip the migrate job (a rollback: an older
#                                                 image does not know the newer revisions)
#   ROSE_BACKUP=0 ...                             skip the backup taken before migrating
#   ROSE_BACKUP_DIR=<dir> ...                     where those backups go (default: backups/)
#   ROSE_BACKUP_KEEP=<n> ...                      how many of them stay (default: 10)
set -euo pipefail
cd "$(dirname "$0")/../.."

# Providers before their callers (docs/deployment.md: a release that adds a request field goes
# out provider first): events answers orders and cart, orders answers cart.
APPS=(relations likes blog market events orders cart)
if [ "$#" -gt 0 ]; then
    APPS=("$@")
fi
ROSE_TAG="${ROSE_TAG:-$(git rev-parse --short HEAD)}"
export ROSE_TAG
COMPOSE=(docker compose -f compose.yaml)

if docker image inspect "rose-ash:$ROSE_TAG" >/dev/null 2>&1; then
    echo "using the existing image rose-ash:$ROSE_TAG"
else
    echo "building rose-ash:$ROSE_TAG"
    "${COMPOSE[@]}" build
fi
"${COMPOSE[@]}" up -d postgres
# Migrations are additive (the running version keeps working on the new schema): migrate first,
# after a backup of every database's rows (what a migration that went wrong is undone from).
if [ "${ROSE_MIGRATE:-1}" != "0" ]; then
    if [ "${ROSE_BACKUP:-1}" != "0" ]; then
        backups="$(realpath -m "${ROSE_BACKUP_DIR:-backups}")"
        mkdir -p "$backups"
        "${COMPOSE[@]}" run --rm --user "$(id -u)" -v "$backups:/backup" \
            --entrypoint rose migrate db backup --keep "${ROSE_BACKUP_KEEP:-10}" \
            "/backup/$ROSE_TAG-$(date -u +%Y%m%dT%H%M%SZ)"
    fi
    "${COMPOSE[@]}" run --rm migrate
fi

for app in "${APPS[@]}"; do
    echo "deploying $app (rose-ash:$ROSE_TAG)"
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
    echo "roll back: ROSE_TAG=<the previous tag> ROSE_MIGRATE=0 ops/deploy/deploy.sh $app" >&2
    exit 1
done
"${COMPOSE[@]}" up -d caddy
# A changed ops/deploy/Caddyfile takes effect without dropping connections.
"${COMPOSE[@]}" exec -T caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile
