#!/usr/bin/env bash
# Regenerates docs/RELIABILITY.md: runs the fault suite at full strength
# (IBEX_FAULT_REPS=full: 20 SIGKILLs of a source and of a target
# PostgreSQL, 50 of the daemon, ...), then writes the document from the
# records it left in target/reliability/. IBEX_FAULT_REPS=N runs N
# repetitions of each scenario instead; the document then says it is a
# reduced run. Not part of scripts/test.sh, which runs the short form.
set -euo pipefail
cd "$(dirname "$0")/.."
export IBEX_FAULT_REPS="${IBEX_FAULT_REPS:-full}"
bash scripts/install-deps.sh
cargo build --workspace --bins
rm -rf target/reliability
mkdir -p target/reliability
date +%s > target/reliability/started
cargo test -p ibex-tests --test faults -- --test-threads "${IBEX_TEST_THREADS:-2}"
cargo run --quiet -p ibex-tests --bin reliability-report
