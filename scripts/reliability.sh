#!/usr/bin/env bash
# Regenerates docs/RELIABILITY.md: runs the fault suite, then writes the
# document from the records it left in target/reliability/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
rm -rf target/reliability
cargo test -p ibex-tests --test faults -- --test-threads "${IBEX_TEST_THREADS:-4}"
cargo run --quiet -p ibex-tests --bin reliability-report
