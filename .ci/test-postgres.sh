#!/usr/bin/env bash
# The whole test suite with its PostgreSQL half: installs PostgreSQL from Debian's packages
# when absent, starts a throwaway cluster (its own data directory under target/, its own
# port), runs `cargo test` against it, and stops it. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/postgres.sh
export TCC_REQUIRE_POSTGRES=1
cargo test "$@"
