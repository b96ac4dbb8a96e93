#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the
# workspace against real PostgreSQL clusters that the harness starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
rm -rf target/reliability
cargo test --workspace -- --test-threads "${IBEX_TEST_THREADS:-4}"
# docs/RELIABILITY.md from what the fault tests just did.
cargo run --quiet -p ibex-tests --bin reliability-report
