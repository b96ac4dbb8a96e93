#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the
# workspace against real PostgreSQL clusters that the harness starts. It
# writes only under target/ and temporary directories: regenerating
# docs/RELIABILITY.md is its own command (scripts/reliability.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
rm -rf target/reliability
cargo test --workspace -- --test-threads "${IBEX_TEST_THREADS:-4}"
