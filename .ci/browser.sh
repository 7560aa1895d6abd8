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
source .ci/coordinator.sh --participant-timeout 1s --max-retry-interval 2s --stuck-after 1s

# A scriptable participant for the dashboard's actions.
cargo build --quiet -p tcc-participant --bin tcc-fake-participant
fake_port=$(mktemp)
rm -f "$fake_port"
./target/debug/tcc-fake-participant --listen 127.0.0.1:0 --port-file "$fake_port" >/dev/null 2>&1 &
fake=$!
# A second coordinator with named tokens and roles: what each role is shown and may do.
tokens_file=$(mktemp)
printf '%s\n' "# name role secret" "grafana viewer viewer-secret-0123456789" \
    "alice operator operator-secret-0123456" >"$tokens_file"
roles_out=$(mktemp)
./target/debug/tcc-coordinator --ephemeral --listen 127.0.0.1:0 --api-tokens-file "$tokens_file" \
    >"$roles_out" 2>/dev/null &
roles=$!
trap 'kill $coordinator $fake $roles 2>/dev/null || true; rm -f "$coordinator_out" "$fake_port" "$tokens_file" "$roles_out"' EXIT
for _ in $(seq 1 100); do
    [ -s "$fake_port" ] && grep -q "listening on" "$roles_out" && break
    sleep 0.1
done
roles_base=$(sed -n 's/^tcc-coordinator listening on //p' "$roles_out")

TCC_BASE="$base" TCC_ROLES_BASE="$roles_base" FAKE_BASE="http://127.0.0.1:$(cat "$fake_port")" \
    node .ci/browser/ui.test.mjs
