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

cargo build --quiet --bin tcc-coordinator
out=$(mktemp)
./target/debug/tcc-coordinator --ephemeral --listen 127.0.0.1:0 \
    --participant-timeout 1s --max-retry-interval 2s >"$out" 2>/dev/null &
coordinator=$!
trap 'kill $coordinator 2>/dev/null || true; rm -f "$out"' EXIT
base=""
for _ in $(seq 1 100); do
    base=$(sed -n 's/^tcc-coordinator listening on //p' "$out")
    [ -n "$base" ] && break
    sleep 0.1
done
[ -n "$base" ] || { echo "the coordinator did not start" >&2; exit 1; }

TCC_BASE="$base" node .ci/browser/ui.test.mjs
