#!/usr/bin/env bash
# The choreography from TypeScript: a client generated from openapi/coordinator.yaml with
# openapi-typescript (the types) and openapi-fetch (the calls), from the npm registry at the
# versions of tests/typescript/package-lock.json; the tests are type-checked by tsc against
# the generated types, then run by node's test runner against the coordinator and
# tcc-fake-participant as processes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null; then
    apt-get install -y --no-install-recommends nodejs npm >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y --no-install-recommends nodejs npm >/dev/null; }
fi
cargo build --release --bin tcc-coordinator
cargo build --release -p tcc-participant --bin tcc-fake-participant

cd tests/typescript
npm ci --no-audit --no-fund --loglevel=error
rm -rf generated dist
npm run --silent generate
npm run --silent build
npm test
