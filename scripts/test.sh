#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the
# workspace against real PostgreSQL clusters that the harness starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads "${IBEX_TEST_THREADS:-4}"
