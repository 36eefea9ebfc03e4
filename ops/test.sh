#!/usr/bin/env bash
# The test command: installs what the tests need (the project with its test extras in .venv,
# Debian's chromium for the browser tests) and runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[test]'

# Browser tests drive Debian's chromium through Playwright; no tool downloads a browser.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is missing: install Debian's chromium package (apt-get install chromium)" >&2
        exit 1
    fi
fi

# The accessibility checks inject axe-core from npm (into .cache/axe, git-ignored).
if [ ! -f .cache/axe/node_modules/axe-core/axe.min.js ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "installing axe-core (npm)"
        npm install --prefix .cache/axe --no-audit --no-fund --silent axe-core@4.10
    else
        echo "npm is missing: install Debian's npm package (apt-get install npm) for axe-core" >&2
        exit 1
    fi
fi

exec "$VENV/bin/python" -m pytest "$@"
