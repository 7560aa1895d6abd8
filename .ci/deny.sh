#!/usr/bin/env bash
# cargo-deny (crates.io) over advisories, licences, bans and sources (deny.toml).
# The advisory database cannot be fetched from these machines: a snapshot of RustSec's
# advisory-db sits beside the project (../shared/advisory-db, or $TCC_ADVISORY_DB).
# cargo-deny wants it as a git repository under deny.toml's db-path, named after its URL.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null; then
    cargo install --locked --quiet cargo-deny@0.20.2
fi

snapshot="${TCC_ADVISORY_DB:-}"
for candidate in "$snapshot" ../shared/advisory-db /work/shared/advisory-db; do
    if [ -n "$candidate" ] && [ -d "$candidate/crates" ]; then
        snapshot=$candidate
        break
    fi
done
if [ ! -d "$snapshot/crates" ]; then
    echo "no advisory-db snapshot found (set TCC_ADVISORY_DB)" >&2
    exit 1
fi

db=target/advisory-dbs/advisory-db-3157b0e258782691
rm -rf "$db"
mkdir -p "$(dirname "$db")"
cp -r "$snapshot" "$db"
git -C "$db" init --quiet
git -C "$db" add --all
git -C "$db" -c user.name=ci -c user.email=ci@localhost commit --quiet -m "advisory-db snapshot"
echo "advisories from: $(head -c 200 "$snapshot/SNAPSHOT" 2>/dev/null || echo "$snapshot")"

# Every platform's crates must be in the local cache before running offline.
cargo fetch --quiet
cargo deny --offline check
