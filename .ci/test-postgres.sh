#!/usr/bin/env bash
# The whole test suite, with its PostgreSQL half: installs PostgreSQL from Debian's packages
# when absent, starts a throwaway cluster (its own data directory under target/, its own
# port), runs `cargo test -- --include-ignored` against it (the PostgreSQL tests are
# `#[ignore = "needs TCC_TEST_POSTGRES"]`), and stops it. Extra arguments go to the test
# binaries, after `--include-ignored`.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/postgres.sh
cargo test -- --include-ignored "$@"
