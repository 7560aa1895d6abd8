#!/usr/bin/env bash
# Swagger UI and the dashboard in a real browser: Debian's Chromium driven by playwright-core
# (npm), against a running coordinator and a tcc-fake-participant. Screenshots land in
# target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
    apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
if [ ! -d .ci/browser/node_modules/playwright-core ]; then
    (cd .ci/browser && npm install --no-audit --no-fund --silent)
fi

rm -rf target/browser
source .ci/coordinator.sh --participant-timeout 1s --max-retry-interval 2s

# A scriptable participant for the dashboard's actions.
cargo build --quiet -p tcc-participant --bin tcc-fake-participant
fake_port=$(mktemp)
rm -f "$fake_port"
./target/debug/tcc-fake-participant --listen 127.0.0.1:0 --port-file "$fake_port" >/dev/null 2>&1 &
fake=$!
trap 'kill $coordinator $fake 2>/dev/null || true; rm -f "$coordinator_out" "$fake_port"' EXIT
for _ in $(seq 1 100); do
    [ -s "$fake_port" ] && break
    sleep 0.1
done

TCC_BASE="$base" FAKE_BASE="http://127.0.0.1:$(cat "$fake_port")" node .ci/browser/ui.test.mjs
