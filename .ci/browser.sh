#!/usr/bin/env bash
# Swagger UI and the dashboard in a real browser: Debian's Chromium driven by playwright-core
# (npm), against a running coordinator. Screenshots land in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
    apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
if [ ! -d .ci/browser/node_modules/playwright-core ]; then
    (cd .ci/browser && npm install --no-audit --no-fund --silent)
fi

source .ci/coordinator.sh --participant-timeout 1s --max-retry-interval 2s

TCC_BASE="$base" node .ci/browser/ui.test.mjs
